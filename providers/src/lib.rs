//! fleet's cloud providers: implementations of `fleet_engine::provider::Provider`.
//!
//! In: requests from the engine's executor. Out: what the clouds report. [`sim`] is the
//! embedded simulated cloud, the default target of tests and the benchmark bed.

pub mod sim;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "gcp")]
pub mod gcp;
