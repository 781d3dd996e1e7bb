//! `raft-kv backup` and `raft-kv restore` (issue 16; docs/design/backup-plan.md).
//!
//! A backup file: the magic `RAFTKVB1`; the state machine's format version (u8), the applied
//! index and its entry's time (u64 each, little-endian); then chunks, each its length (u32,
//! not 0) and the items a node's RAFT.BACKUP NEXT answered (framed as the snapshot stream
//! frames them); then a 0 length, the chunk count and the byte count of the chunks (u64 each)
//! and a CRC-32 of everything before it (u32). A file cut short or altered anywhere fails the
//! check, and restore checks the whole file before it writes anything.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use raft_kv_core::{HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raft_kv_runtime::storage::{SnapshotItem, Storage};
use raft_kv_runtime::tls::{Io, PeerTls};
use redis_protocol::resp2::types::BytesFrame;
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RAFTKVB1";

/// Bytes of a chunk at most, in a backup file and in a reply to RAFT.BACKUP NEXT (a node sends
/// about 1 MiB, more only when one item is larger).
const CHUNK_BYTES_MAX: usize = 64 << 20;

/// Bytes of one reply a `Conn` takes at most: a chunk and its RESP framing.
const REPLY_BYTES_MAX: usize = CHUNK_BYTES_MAX + 1024;

/// A RESP connection to one node, plain or TLS: one command at a time. The backup tool's and
/// `--join`'s (main.rs's `redis_call`) client.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    addr: String,
    tls: bool,
    /// Whether the node has answered anything yet.
    answered: bool,
}

impl Conn {
    /// Connects to `addr` (with TLS when `tls` is given: the node's certificate is checked
    /// against the CA and the IP address dialled, and ours presented) and AUTHs with
    /// `password`.
    pub(crate) async fn open(
        addr: &str,
        password: Option<&str>,
        tls: Option<&PeerTls>,
    ) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let io: Box<dyn Io> = match tls {
            Some(tls) => {
                let peer = tcp.peer_addr().with_context(|| format!("connected to {addr}"))?;
                tls.connect(peer, tcp).await.map_err(|e| {
                    anyhow::anyhow!("{addr}: {e} (is its client port TLS? it is if the node has --tls-cert-file)")
                })?
            }
            None => Box::new(tcp),
        };
        let mut c = Conn {
            io,
            buf: BytesMut::new(),
            addr: addr.to_string(),
            tls: tls.is_some(),
            answered: false,
        };
        if let Some(pw) = password {
            if let Err(e) = c.request(&["AUTH", pw]).await? {
                bail!("{addr} refused the password: {e}");
            }
        }
        Ok(c)
    }

    /// Sends `args`; the reply, an error reply as an error naming the node.
    pub(crate) async fn call(&mut self, args: &[&str]) -> anyhow::Result<BytesFrame> {
        self.request(args).await?.map_err(|e| anyhow::anyhow!("{}: {e}", self.addr))
    }

    /// Sends `args`; the reply, or the text of an error reply. Err: the connection failed or
    /// the bytes were no RESP.
    pub(crate) async fn request(
        &mut self,
        args: &[&str],
    ) -> anyhow::Result<Result<BytesFrame, String>> {
        let reply = self.exchange(args).await;
        match reply {
            // A node whose client port speaks TLS drops a plain client at its first bytes
            // (after a TLS alert, which is no RESP).
            Err(e) if !self.tls && !self.answered => Err(e.context(format!(
                "{} answered no RESP: does its client port speak TLS? (raft-kv backup: give --tls, --cacert, --cert and --key)",
                self.addr
            ))),
            Err(e) => Err(e),
            Ok(frame) => {
                self.answered = true;
                Ok(match frame {
                    BytesFrame::Error(e) => Err(e.to_string()),
                    frame => Ok(frame),
                })
            }
        }
    }

    async fn exchange(&mut self, args: &[&str]) -> anyhow::Result<BytesFrame> {
        use redis_protocol::resp2::decode::decode_bytes_mut;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let addr = &self.addr;
        self.io.write_all(req.as_bytes()).await.with_context(|| format!("writing to {addr}"))?;
        loop {
            if let Some((frame, _, _)) =
                decode_bytes_mut(&mut self.buf).map_err(|e| anyhow::anyhow!("{addr}: {e}"))?
            {
                return Ok(frame);
            }
            if self.buf.len() > REPLY_BYTES_MAX {
                bail!("{addr} sent a reply of more than {REPLY_BYTES_MAX} bytes");
            }
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .with_context(|| format!("reading from {addr}"))?;
            if n == 0 {
                bail!("{addr} closed the connection");
            }
        }
    }
}

fn progress(bytes: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let template =
        if bytes { "{spinner} {bytes} ({bytes_per_sec}) {msg}" } else { "{spinner} {pos} {msg}" };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// What a backup holds, as its header and trailer say.
#[derive(Debug)]
pub struct Summary {
    pub index: u64,
    pub chunks: u64,
    pub bytes: u64,
}

/// `raft-kv backup --from HOST:PORT --out FILE`: the state at a linearizable point (the node
/// confirms it like any read), written to FILE.partial and renamed to FILE once complete; a
/// backup that fails removes FILE.partial.
pub async fn backup(
    from: &str,
    out: &Path,
    password: Option<&str>,
    tls: Option<&PeerTls>,
) -> anyhow::Result<Summary> {
    let mut conn = Conn::open(from, password, tls).await?;
    let int = |f: &BytesFrame| match f {
        BytesFrame::Integer(n) => Ok(*n as u64),
        other => bail!("{from} answered RAFT.BACKUP START with {other:?}"),
    };
    let (id, index, time, version) = match conn.call(&["RAFT.BACKUP", "START"]).await? {
        BytesFrame::Array(a) if a.len() == 4 => {
            (int(&a[0])?, int(&a[1])?, int(&a[2])?, int(&a[3])?)
        }
        other => bail!("{from} answered RAFT.BACKUP START with {other:?}"),
    };
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let header = Header { version, index, time, id };
    match write_chunks(&mut conn, from, header, file).await {
        Ok((chunks, bytes)) => {
            std::fs::rename(&partial, out).with_context(|| {
                format!("cannot rename {} to {}", partial.display(), out.display())
            })?;
            Ok(Summary { index, chunks, bytes })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// What RAFT.BACKUP START answered.
struct Header {
    version: u64,
    index: u64,
    time: u64,
    /// The backup's id on the node.
    id: u64,
}

/// Writes the backup into `file` and syncs it: (chunks, bytes of chunks).
async fn write_chunks(
    conn: &mut Conn,
    from: &str,
    h: Header,
    file: std::fs::File,
) -> anyhow::Result<(u64, u64)> {
    let mut w = std::io::BufWriter::new(file);
    let mut crc = crc32fast::Hasher::new();
    let mut put = |w: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| -> std::io::Result<()> {
        crc.update(b);
        w.write_all(b)
    };
    let mut header = MAGIC.to_vec();
    header.push(u8::try_from(h.version).context("format version")?);
    header.extend_from_slice(&h.index.to_le_bytes());
    header.extend_from_slice(&h.time.to_le_bytes());
    put(&mut w, &header)?;
    let bar = progress(true);
    bar.set_message(format!("backup of {from} at index {}", h.index));
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let next = h.id.to_string();
    loop {
        let chunk: Bytes = match conn.call(&["RAFT.BACKUP", "NEXT", &next]).await? {
            BytesFrame::Null => break,
            BytesFrame::BulkString(b) => b,
            other => bail!("{from} answered RAFT.BACKUP NEXT with {other:?}"),
        };
        if chunk.is_empty() {
            continue;
        }
        if chunk.len() > CHUNK_BYTES_MAX {
            bail!("{from} sent a chunk of {} bytes; a backup holds chunks of {CHUNK_BYTES_MAX} bytes at most", chunk.len());
        }
        put(&mut w, &(chunk.len() as u32).to_le_bytes())?;
        put(&mut w, &chunk)?;
        chunks += 1;
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
    }
    let mut trailer = 0u32.to_le_bytes().to_vec();
    trailer.extend_from_slice(&chunks.to_le_bytes());
    trailer.extend_from_slice(&bytes.to_le_bytes());
    put(&mut w, &trailer)?;
    w.write_all(&crc.finalize().to_le_bytes())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    bar.finish_and_clear();
    Ok((chunks, bytes))
}

/// A backup file read through, chunk by chunk, its checksum kept.
struct Reader {
    r: BufReader<std::fs::File>,
    crc: crc32fast::Hasher,
    path: PathBuf,
}

impl Reader {
    fn open(path: &Path) -> anyhow::Result<Reader> {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Reader { r: BufReader::new(f), crc: crc32fast::Hasher::new(), path: path.to_path_buf() })
    }

    fn exact(&mut self, n: usize, what: &str) -> anyhow::Result<Vec<u8>> {
        let mut b = vec![0; n];
        self.r.read_exact(&mut b).map_err(|_| {
            anyhow::anyhow!(
                "{} is cut short: it ends inside its {what}; it is not a whole backup",
                self.path.display()
            )
        })?;
        self.crc.update(&b);
        Ok(b)
    }

    fn u64(&mut self, what: &str) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.exact(8, what)?.try_into().expect("8 bytes")))
    }

    /// (format version, applied index, time).
    fn header(&mut self) -> anyhow::Result<(u8, u64, u64)> {
        let magic = self.exact(8, "header")?;
        if magic != MAGIC {
            bail!(
                "{} is not a raft-kv backup (it does not begin with {:?})",
                self.path.display(),
                std::str::from_utf8(MAGIC).unwrap_or("")
            );
        }
        let version = self.exact(1, "header")?[0];
        if version != raft_kv_runtime::codec::FORMAT_VERSION {
            bail!(
                "{} holds data of format version {version}; this build reads version {}",
                self.path.display(),
                raft_kv_runtime::codec::FORMAT_VERSION
            );
        }
        Ok((version, self.u64("header")?, self.u64("header")?))
    }

    /// The next chunk, None at the trailer (which it checks).
    fn chunk(&mut self, seen: &mut (u64, u64)) -> anyhow::Result<Option<Vec<u8>>> {
        let len = u32::from_le_bytes(self.exact(4, "chunks")?.try_into().expect("4 bytes"));
        if len > 0 {
            if len as usize > CHUNK_BYTES_MAX {
                bail!("{} is damaged: a chunk claims {len} bytes", self.path.display());
            }
            seen.0 += 1;
            seen.1 += len as u64;
            return Ok(Some(self.exact(len as usize, "chunks")?));
        }
        let (chunks, bytes) = (self.u64("trailer")?, self.u64("trailer")?);
        let want = self.crc.clone().finalize();
        let mut crc = [0u8; 4];
        self.r.read_exact(&mut crc).map_err(|_| {
            anyhow::anyhow!("{} is cut short: it ends inside its trailer", self.path.display())
        })?;
        if u32::from_le_bytes(crc) != want {
            bail!("{} is damaged: its checksum does not match its contents", self.path.display());
        }
        if (chunks, bytes) != *seen {
            bail!("{} is damaged: its trailer counts {chunks} chunks of {bytes} bytes, the file holds {} of {}", self.path.display(), seen.0, seen.1);
        }
        if self.r.read(&mut [0u8; 1])? != 0 {
            bail!("{} is damaged: there are bytes after its end", self.path.display());
        }
        Ok(None)
    }
}

/// Checks a backup file whole; its summary.
pub fn check(path: &Path) -> anyhow::Result<Summary> {
    let mut r = Reader::open(path)?;
    let (_, index, _) = r.header()?;
    let mut seen = (0, 0);
    while let Some(chunk) = r.chunk(&mut seen)? {
        let mut stream = BytesMut::from(&chunk[..]);
        raft_kv_runtime::snapshot::unframe_items(&mut stream)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
        if !stream.is_empty() {
            bail!("{} is damaged: a chunk ends inside an item", path.display());
        }
    }
    Ok(Summary { index, chunks: seen.0, bytes: seen.1 })
}

/// `raft-kv restore FILE --cluster ADDRS --data-dir DIR ...`: the data directories of a new
/// cluster (its identity from the new --cluster, as a node started with it expects) holding
/// the backup's state, installed as a snapshot at the backup's index. Checks the file whole
/// first; refuses a data directory that exists and is not empty.
pub fn restore(file: &Path, cluster: &[SocketAddr], dirs: &[PathBuf]) -> anyhow::Result<Summary> {
    if dirs.len() != cluster.len() {
        bail!(
            "--cluster lists {} node(s) but {} --data-dir were given (one per node, in id order)",
            cluster.len(),
            dirs.len()
        );
    }
    for d in dirs {
        if d.exists() && std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(true) {
            bail!(
                "{} exists and is not empty: restore writes new data directories only",
                d.display()
            );
        }
    }
    let summary = check(file)?;
    let raft_addrs: BTreeMap<NodeId, SocketAddr> =
        cluster.iter().enumerate().map(|(i, a)| (NodeId(i as u64 + 1), *a)).collect();
    let cluster_id = raft_kv_runtime::cluster_id(&raft_addrs);
    let membership = Membership {
        voters: raft_addrs.keys().copied().collect(),
        addrs: raft_addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
        ..Default::default()
    };
    let bar = progress(false);
    for (i, dir) in dirs.iter().enumerate() {
        let node = i as u64 + 1;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut storage = crate::rocks::RocksStorage::open(
            dir,
            crate::rocks::Identity { cluster_id, node_id: node },
        )?;
        let mut r = Reader::open(file)?;
        let (_, index, time) = r.header()?;
        let mut seen = (0, 0);
        let mut first = true;
        while let Some(chunk) = r.chunk(&mut seen)? {
            let mut stream = BytesMut::from(&chunk[..]);
            let items = raft_kv_runtime::snapshot::unframe_items(&mut stream)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            bar.inc(items.len() as u64);
            storage.stage_snapshot(first, &items)?;
            first = false;
        }
        storage.stage_snapshot(first, &[SnapshotItem::Membership(membership.clone())])?;
        // Term 1 for the snapshot and the node: a new cluster, its first term.
        let hs = HardState { term: Term(1), voted_for: None, recovering: false };
        storage.write_log(Some(hs), None)?;
        storage.install_snapshot(SnapshotMeta { index: LogIndex(index), term: Term(1), time })?;
        storage.log_sync().sync()?;
        bar.set_message(format!("node {node} restored"));
    }
    bar.finish_and_clear();
    Ok(summary)
}
