//! The `fedgate` package: the command line (`cli`, run by `main.rs`) and the harness that starts a
//! federation of real processes, shared by `fedgate demo` and the end-to-end tests.

pub mod cli;
pub mod harness;
