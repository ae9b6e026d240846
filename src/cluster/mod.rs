//! The cluster side of a node: the member view ([`view`]), what nodes say to
//! each other ([`wire`]), the handle the rest of the node uses to read the
//! view and reach peers ([`handle`]), placement by rendezvous hashing
//! ([`placement`]), the names actors are found by ([`groups`]), and the
//! guard on the cluster port that limits unauthenticated peers ([`guard`]). The
//! actors that drive it are `actors::membership`, `actors::peer` and
//! `actors::replicator`.

pub mod groups;
pub mod guard;
pub mod handle;
pub mod placement;
pub mod view;
pub mod wire;

pub use handle::Cluster;
