//! End-to-end tests of the `fleet` CLI: one test binary, one module per area.

mod apply;
mod aws;
mod ci;
mod config;
mod crash;
mod delivery;
mod drift;
mod fault_proxy;
mod gce_server;
mod gcp;
mod gitlab_server;
mod golden;
mod loopback;
mod permissions;
mod plan;
mod quickstart;
mod review;
mod secret_server;
mod support;
mod untrusted;
mod validate;
mod watcher;
