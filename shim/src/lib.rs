//! Box's host runtime library: the client for guest-init's API ([`agent_client`]), sandboxes
//! (microVMs, or host-process inits for tests) with their on-disk records ([`sandbox`]), and
//! the `box` CLI ([`cli`]) and sandbox networks ([`network`]); the containerd shim comes later.

pub mod agent_client;
pub mod cli;
pub mod containerd;
pub mod network;
pub mod sandbox;
pub mod serve;
