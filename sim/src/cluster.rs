//! A cluster of real raft-kv runtime nodes on madsim hosts. Each node's `MemStorage` lives in
//! the harness, so a killed and restarted node comes back with what it had stored.

use madsim::runtime::{Handle, NodeHandle};
use raft_kv_core::NodeId;
use raft_kv_runtime::storage::MemStorage;
use raft_kv_runtime::NodeOptions;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub const RAFT_PORT: u16 = 7000;
pub const REDIS_PORT: u16 = 6379;

pub struct SimCluster {
    pub handle: Handle,
    pub nodes: BTreeMap<NodeId, NodeHandle>,
    pub storages: BTreeMap<NodeId, MemStorage>,
    /// The host clients run on.
    pub client: NodeHandle,
}

pub fn node_ip(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id.0 as u8))
}

pub fn redis_addr(id: NodeId) -> SocketAddr {
    SocketAddr::new(node_ip(id), REDIS_PORT)
}

impl SimCluster {
    /// Starts `n` nodes; `seed` derives every node's RNG seed.
    pub fn start(n: u64, seed: u64) -> SimCluster {
        let handle = Handle::current();
        let addrs: BTreeMap<NodeId, SocketAddr> =
            (1..=n).map(|i| (NodeId(i), SocketAddr::new(node_ip(NodeId(i)), RAFT_PORT))).collect();
        let mut nodes = BTreeMap::new();
        let mut storages = BTreeMap::new();
        for &id in addrs.keys() {
            let storage = MemStorage::new();
            storages.insert(id, storage.clone());
            let addrs = addrs.clone();
            let restarts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let node = handle
                .create_node()
                .name(format!("node{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let storage = storage.clone();
                    let addrs = addrs.clone();
                    let run = restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        let voters = addrs.keys().copied().collect();
                        let raft = raft_kv_core::Config::new(id, voters, seed ^ (id.0 << 32) ^ run);
                        let opts =
                            NodeOptions::new(raft, addrs.clone(), addrs[&id], redis_addr(id));
                        let node =
                            raft_kv_runtime::start(opts, storage).await.expect("node starts");
                        if let Ok(Err(e)) = node.task.await {
                            panic!("node {id} storage failed: {e}");
                        }
                    }
                })
                .build();
            nodes.insert(id, node);
        }
        let client =
            handle.create_node().name("client").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))).build();
        SimCluster { handle, nodes, storages, client }
    }

    pub fn kill(&self, id: NodeId) {
        self.handle.kill(self.nodes[&id].id());
    }

    pub fn restart(&self, id: NodeId) {
        self.handle.restart(self.nodes[&id].id());
    }
}
