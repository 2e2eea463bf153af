//! First-order conductor heating (STANDARDS.md §8): temperature over time, R(T), and the
//! voltage drop the meter sees.
