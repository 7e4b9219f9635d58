#!/usr/bin/env node
// Example workload "greeter", written in JavaScript for Node.js: a spore's command may be
// any executable. Same contract as the Python examples: listens on $HOST:$PORT, answers
// GET /health and GET /hello (naming app, version and instance), stops cleanly on SIGTERM.
"use strict";
const http = require("http");

const APP = "greeter";
const VERSION = process.env.MYCO_VERSION || "1.0.0";
const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 8083);

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/health") {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("ok\n");
  } else if (path === "/hello" || path === "/") {
    const body = {
      app: APP,
      version: VERSION,
      instance: process.env.MYCO_INSTANCE || "local",
      node: process.env.MYCO_NODE || "",
      message: process.env.GREETING || "Hello from a Node.js spore",
      runtime: `node ${process.version}`,
    };
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify(body) + "\n");
  } else {
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found\n");
  }
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen(port, host, () => {
  console.error(`${APP} ${VERSION} listening on ${host}:${port}`);
});
