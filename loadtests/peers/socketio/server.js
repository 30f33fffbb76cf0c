// Socket.IO 4 peer for the comparison: rooms, a "msg" event broadcast to the room (the sender
// included, like Chatty), nothing persisted. WebSocket transport only, no compression.
//   node server.js [port]   (default 8091)
"use strict";
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT || 8091);
const io = new Server(port, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 1e6,
  pingInterval: 25000,
  pingTimeout: 20000,
});

io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(room);
    socket.emit("joined", room);
  });
  socket.on("msg", (room, body) => {
    io.to(room).emit("msg", body);
  });
});

console.error(`socket.io ${require("socket.io/package.json").version} listening on ${port}`);
