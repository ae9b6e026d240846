//! The cluster side of a node. For now a node is a cluster of one: [`placement`]
//! already decides ownership by rendezvous hashing over the members, and
//! [`groups`] names the actors that other parts look up.

pub mod groups;
pub mod placement;
