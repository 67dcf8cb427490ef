//! The target workload and its `-primary` copy: readiness, revision checksums, config
//! tracking, promotion and scaling.
