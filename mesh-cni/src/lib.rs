//! Traffic capture for the mesh: the iptables rule generator ([`capture`]), the chained
//! CNI plugin ([`cni`]) that applies it in each meshed pod's network namespace, the pod
//! sources it looks pods up in ([`pod`]), and namespace entry ([`netns`]).

pub mod capture;
pub mod cni;
pub mod netns;
pub mod pod;
