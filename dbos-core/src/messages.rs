//! Messages sent to a run (`notifications`): send with an optional idempotency key, peek in
//! order, consume together with a checkpoint, and wait with a timeout.

use std::time::Duration;

use crate::SystemDatabase;
use crate::error::Result;

/// One message in a run's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id (the idempotency key's row id).
    pub message_id: String,
    /// Topic.
    pub topic: String,
    /// Serialized body.
    pub body: String,
    /// Serialization label.
    pub serialization: Option<String>,
    /// Send time, epoch ms.
    pub created_at_ms: i64,
    /// Position in the destination's total order.
    pub seq: i64,
}

impl SystemDatabase {
    /// Sends a message. With an idempotency key, a repeated send is a no-op. Returns the message
    /// id. Fails with [`crate::Error::UnknownRun`] when the destination does not exist.
    pub async fn send(
        &self,
        destination: &str,
        topic: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Result<String> {
        let _ = (destination, topic, body, idempotency_key);
        todo!("send")
    }

    /// The oldest unconsumed messages of a topic (all topics when `None`), in send order.
    pub async fn peek_messages(
        &self,
        destination: &str,
        topic: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let _ = (destination, topic, limit);
        todo!("peek_messages")
    }

    /// DBOS `recv`: at step `function_id`, consume the oldest message of `topic` and checkpoint
    /// it in one transaction; on replay return the checkpointed value. Waits up to `timeout`;
    /// `None` when nothing arrived (also checkpointed).
    pub async fn recv(
        &self,
        workflow_id: &str,
        function_id: i32,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<String>> {
        let _ = (workflow_id, function_id, topic, timeout);
        todo!("recv")
    }

    /// Waits until an unconsumed message of `topic` (any topic when `None`) exists; `false` on
    /// timeout.
    pub async fn wait_for_message(
        &self,
        destination: &str,
        topic: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let _ = (destination, topic, timeout);
        todo!("wait_for_message")
    }
}
