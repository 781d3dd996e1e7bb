//! A minimal Redis client for the simulation: one request at a time over (simulated) TCP,
//! replies decoded by `redis-protocol`. Every call is bounded by a timeout.

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A decoded reply, simplified for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Ok(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
}

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    timeout: Duration,
}

fn convert(f: BytesFrame) -> Value {
    match f {
        BytesFrame::SimpleString(s) => Value::Ok(String::from_utf8_lossy(&s).into_owned()),
        BytesFrame::Error(e) => Value::Err(e.to_string()),
        BytesFrame::Integer(n) => Value::Int(n),
        BytesFrame::BulkString(b) => Value::Bulk(b.to_vec()),
        BytesFrame::Null => Value::Nil,
        BytesFrame::Array(items) => Value::Array(items.into_iter().map(convert).collect()),
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Client {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(Client { stream, buf: BytesMut::new(), timeout })
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, ClientError> {
        let req = encode_command(args);
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&req).await?;
            self.stream.flush().await?;
            self.read_reply().await
        })
        .await
        .map_err(|_| ClientError::Timeout)?
    }

    /// Sends several commands in one write, as a pipelining client does; read each reply, in
    /// order, with `read`.
    pub async fn send(&mut self, cmds: &[Vec<Vec<u8>>]) -> Result<(), ClientError> {
        let mut req = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            req.extend_from_slice(&encode_command(&args));
        }
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(&req).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout)??;
        Ok(())
    }

    /// Reads the next reply.
    pub async fn read(&mut self) -> Result<Value, ClientError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_reply()).await.map_err(|_| ClientError::Timeout)?
    }

    async fn read_reply(&mut self) -> Result<Value, ClientError> {
        loop {
            if let Some((frame, _, _)) =
                decode_bytes_mut(&mut self.buf).map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(convert(frame));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}
