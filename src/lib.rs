//! Serin: a progressive-delivery operator for Kubernetes.

pub mod analysis;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod notify;
pub mod router;
pub mod server;
pub mod tester;
