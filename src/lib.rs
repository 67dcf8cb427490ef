//! Serin: a progressive-delivery operator for Kubernetes.

pub mod analysis;
pub mod controller;
pub mod crd;
pub mod notify;
pub mod router;
pub mod tester;
