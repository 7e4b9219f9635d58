// Example workload "express-hello": Express, with its dependencies vendored.
//
// Its spore carries node_modules/ (`build: node:` in garden/express-hello.yaml runs
// `npm ci --omit=dev` against package-lock.json); Node finds node_modules/ beside this
// script, and the agent also sets NODE_PATH to it. Listens on $HOST:$PORT (default
// 127.0.0.1:8084):
//
//   GET /health → 200 ok
//   GET /hello  → JSON naming the app, its version and the instance serving it.
//
// By hand: `npm ci && node server.js`.
"use strict";

const express = require("express");

const APP = "express-hello";
const VERSION = "1.0.0";
const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 8084);

const app = express();
app.disable("x-powered-by");

app.get("/health", (req, res) => {
  res.type("text/plain").send("ok\n");
});

app.get(["/hello", "/"], (req, res) => {
  res.json({
    app: APP,
    version: process.env.MYCO_VERSION || VERSION,
    instance: process.env.MYCO_INSTANCE || "local",
    node: process.env.MYCO_NODE || "",
    message: process.env.GREETING || "Hello from Express",
  });
});

const server = app.listen(port, host, () => {
  console.log(`${APP} listening on ${host}:${port}`);
});

// SIGTERM/SIGINT: stop accepting, finish requests in flight, exit 0.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
}
