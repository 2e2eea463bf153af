//! Integration tests of the head-end on real sockets.

mod poller;
mod subscriber;
