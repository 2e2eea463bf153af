//! Sim mode's backhaul model: latency, jitter, loss with QoS-1 retries, outage windows.
