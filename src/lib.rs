//! The `fedgate` package: the command line (in `main.rs`) and the harness that starts a
//! federation of real processes, shared by `fedgate demo` and the end-to-end tests.

pub mod harness;
