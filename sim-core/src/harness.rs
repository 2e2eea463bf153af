//! The virtual-time harness: runs a scenario's meters, links and head-end and collects what
//! the expectations are judged on.
