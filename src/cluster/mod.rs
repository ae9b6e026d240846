//! The cluster side of a node: the member view ([`view`]), what nodes say to
//! each other ([`wire`]), the handle the rest of the node uses to read the
//! view and reach peers ([`handle`]), placement by rendezvous hashing
//! ([`placement`]), the names actors are found by ([`groups`]), and the
//! guard on the cluster port that limits unauthenticated peers ([`guard`]),
//! and the way host permits travel to each host's owner node ([`hosts`]).
//!
//! Its actors: [`membership`] (the NodeServer, discovery, heartbeats, the
//! member view) and [`peer`] (the one actor peers reach on this node, which
//! hands their requests on).

pub mod groups;
pub mod guard;
pub mod handle;
pub mod hosts;
pub mod membership;
pub mod peer;
pub mod placement;
pub mod view;
pub mod wire;

pub use handle::Cluster;
