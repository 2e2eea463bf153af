//! Judging expectations against a run's observations.
