//! Generated bindings for `proto/agent.proto`: messages, the async server trait and client.
// Generated code: its style is protobuf-codegen's, not ours.
#![allow(warnings, clippy::all, clippy::undocumented_unsafe_blocks)]

pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent/agent.rs"));
}

pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent/agent_ttrpc.rs"));
}

pub use agent::*;
pub use agent_ttrpc::{create_agent, Agent, AgentClient};
