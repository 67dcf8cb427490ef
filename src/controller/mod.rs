//! The controller: a pure state machine (`machine`) between the code that observes the
//! cluster and the code that acts on it.

pub mod machine;
pub mod workload;
