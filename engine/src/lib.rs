//! fleet's engine: the pure stages of the pipeline and the traits the I/O layers implement.
//!
//! `spec → render → desired → diff → graph → plan → apply`; see ARCHITECTURE.md for the code map.
//! Nothing here depends on a cloud SDK: providers implement [`provider::Provider`].

pub mod apply;
pub mod catalog;
pub mod desired;
pub mod diff;
pub mod graph;
pub mod impact;
pub mod ops;
pub mod permissions;
pub mod plan;
pub mod provider;
pub mod render;
pub mod retry;
pub mod secrets;
pub mod spec;
pub mod state;
#[cfg(test)]
mod test_support;
