//! `Client::list_workflows` and `Client::count_workflows` (upstream's names and shapes), on the
//! visibility query parser of [`crate::visibility`]. Results are newest first and page lazily.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use dbos_core::{RunFilter, WorkflowStatus};
use futures::{Stream, StreamExt};
use temporalio_common_wasm::Memo;
use temporalio_common_wasm::data_converters::DataConverter;
use temporalio_common_wasm::search_attributes::{
    SearchAttributeError, SearchAttributeValue, SearchAttributes,
};
use temporalio_protos::temporal::api::common::v1::Payload;
use temporalio_protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_protos::temporal::api::workflow::v1::WorkflowExecutionInfo as ProtoExecutionInfo;

use crate::options::RpcOptions;
use crate::visibility::{self, Target};
use crate::workflow_handle::{WorkflowExecutionStatus, execution_info};
use crate::{Client, ClientError, NamespacedClient, to_system_time, wf_ctx};

/// Rows fetched per page of a list stream.
pub(crate) const PAGE_SIZE: i64 = 100;

/// Options of [`Client::list_workflows`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowListOptions {
    /// Most workflows returned; all matching when unset.
    pub limit: Option<usize>,
    /// RPC metadata is refused; the timeout has no effect.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// Options of [`Client::count_workflows`].
#[derive(Debug, Clone, Default, bon::Builder)]
#[non_exhaustive]
pub struct WorkflowCountOptions {
    /// RPC metadata is refused; the timeout has no effect.
    #[builder(default)]
    pub rpc_options: RpcOptions,
}

/// A workflow run returned by [`Client::list_workflows`].
#[derive(Debug, Clone)]
pub struct WorkflowExecution {
    raw: ProtoExecutionInfo,
    data_converter: DataConverter,
}

impl WorkflowExecution {
    /// The workflow id.
    pub fn id(&self) -> &str {
        self.raw
            .execution
            .as_ref()
            .map_or("", |e| e.workflow_id.as_str())
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        self.raw
            .execution
            .as_ref()
            .map_or("", |e| e.run_id.as_str())
    }

    /// The workflow type.
    pub fn workflow_type(&self) -> &str {
        self.raw.r#type.as_ref().map_or("", |t| t.name.as_str())
    }

    /// The status.
    pub fn status(&self) -> WorkflowExecutionStatus {
        WorkflowExecutionStatus::from_raw(self.raw.status)
    }

    /// When the run was created.
    pub fn start_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw.start_time)
    }

    /// When the run became eligible to start.
    pub fn execution_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw.execution_time)
    }

    /// When the run closed.
    pub fn close_time(&self) -> Option<SystemTime> {
        to_system_time(&self.raw.close_time)
    }

    /// The task queue.
    pub fn task_queue(&self) -> &str {
        &self.raw.task_queue
    }

    /// History length: always 0 (DBOSify keeps no Temporal event histories).
    pub fn history_length(&self) -> i64 {
        self.raw.history_length
    }

    /// The memo, decoded with the client's payload converter.
    pub fn memo(&self) -> Memo {
        Memo::from_raw(
            self.raw.memo.clone(),
            self.data_converter.payload_converter().clone(),
            wf_ctx(),
        )
    }

    /// The parent workflow id of a child workflow.
    pub fn parent_id(&self) -> Option<&str> {
        self.raw
            .parent_execution
            .as_ref()
            .map(|e| e.workflow_id.as_str())
    }

    /// The parent run id of a child workflow.
    pub fn parent_run_id(&self) -> Option<&str> {
        self.raw
            .parent_execution
            .as_ref()
            .map(|e| e.run_id.as_str())
    }

    /// The search attributes.
    pub fn search_attributes(&self) -> SearchAttributes {
        self.raw
            .search_attributes
            .as_ref()
            .map(SearchAttributes::from_proto)
            .unwrap_or_default()
    }

    /// The proto form.
    pub fn raw(&self) -> &ProtoExecutionInfo {
        &self.raw
    }

    /// Consumes into the proto form.
    pub fn into_raw(self) -> ProtoExecutionInfo {
        self.raw
    }
}

/// The stream of [`Client::list_workflows`]: pages lazily through the matching runs.
pub struct ListWorkflowsStream {
    inner: Pin<Box<dyn Stream<Item = Result<WorkflowExecution, ClientError>> + Send>>,
}

impl Stream for ListWorkflowsStream {
    type Item = Result<WorkflowExecution, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The result of [`Client::count_workflows`]: the total, and per group when the query ends with
/// `GROUP BY ExecutionStatus`.
#[derive(Debug, Clone)]
pub struct WorkflowExecutionCount {
    count: usize,
    groups: Vec<WorkflowCountAggregationGroup>,
}

impl WorkflowExecutionCount {
    /// How many runs match (the sum of the groups when grouped).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The groups; empty without `GROUP BY`.
    pub fn groups(&self) -> &[WorkflowCountAggregationGroup] {
        &self.groups
    }
}

/// One group of a grouped count: its values (the execution status, a `Keyword` search attribute
/// payload) and its count.
#[derive(Debug, Clone)]
pub struct WorkflowCountAggregationGroup {
    values: Vec<Payload>,
    count: usize,
}

impl WorkflowCountAggregationGroup {
    /// The group value at `index` as `T`; `None` when absent or of another type.
    pub fn get<T: SearchAttributeValue>(&self, index: usize) -> Option<T> {
        self.try_get(index).ok().flatten()
    }

    /// The group value at `index` as `T`; `Ok(None)` when absent.
    ///
    /// # Errors
    /// When the value does not decode as `T`.
    pub fn try_get<T: SearchAttributeValue>(
        &self,
        index: usize,
    ) -> Result<Option<T>, SearchAttributeError> {
        match self.values.get(index) {
            Some(p) => T::from_search_attribute_payload(p).map(Some),
            None => Ok(None),
        }
    }

    /// How many runs are in the group.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// A bad query (or RPC metadata) as the client error upstream returns for it.
pub(crate) fn invalid_query(e: impl std::fmt::Display) -> ClientError {
    ClientError::Rpc(tonic::Status::invalid_argument(e.to_string()))
}

/// Pages through the rows matching `filter`, newest first, at most `limit` of them, each
/// converted by `convert`.
pub(crate) fn page_rows<T, F, Fut>(
    client: Client,
    filter: Result<RunFilter, ClientError>,
    limit: Option<usize>,
    convert: F,
) -> Pin<Box<dyn Stream<Item = Result<T, ClientError>> + Send>>
where
    T: Send + 'static,
    F: Fn(WorkflowStatus, Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ClientError>> + Send,
{
    struct State {
        client: Client,
        filter: RunFilter,
        after: Option<(i64, String)>,
        left: Option<usize>,
        done: bool,
    }
    let filter = match filter {
        Ok(f) => f,
        Err(e) => return Box::pin(futures::stream::once(async move { Err(e) })),
    };
    let client_for_rows = client.clone();
    let state = State {
        client,
        filter,
        after: None,
        left: limit,
        done: false,
    };
    let pages = futures::stream::unfold(state, |mut st| async move {
        if st.done || st.left == Some(0) {
            return None;
        }
        // The client caches its database: asking per page costs no round trip.
        let db = match st.client.system_database().await {
            Ok(db) => db,
            Err(e) => {
                st.done = true;
                return Some((Err(ClientError::from(e)), st));
            }
        };
        let want = st.left.map_or(PAGE_SIZE, |l| {
            PAGE_SIZE.min(i64::try_from(l).unwrap_or(PAGE_SIZE))
        });
        match db.list_runs_where(&st.filter, st.after.clone(), want).await {
            Ok(rows) => {
                if rows.len() < usize::try_from(want).unwrap_or(0) {
                    st.done = true;
                }
                if let Some(last) = rows.last() {
                    st.after = Some((last.created_at_ms, last.workflow_id.clone()));
                }
                if let Some(l) = st.left.as_mut() {
                    *l = l.saturating_sub(rows.len());
                }
                Some((Ok(rows), st))
            }
            Err(e) => {
                st.done = true;
                Some((Err(ClientError::from(e)), st))
            }
        }
    });
    let convert = std::sync::Arc::new(convert);
    Box::pin(
        pages
            .flat_map(|page| match page {
                Ok(rows) => futures::stream::iter(rows.into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => futures::stream::iter(vec![Err(e)]),
            })
            .then(move |r| {
                let convert = convert.clone();
                let client = client_for_rows.clone();
                async move {
                    match r {
                        Ok(row) => convert(row, client).await,
                        Err(e) => Err(e),
                    }
                }
            }),
    )
}

/// Counts the rows matching a parsed query.
pub(crate) async fn count(
    client: &Client,
    parsed: visibility::ParsedQuery,
) -> Result<(usize, Vec<(Vec<Payload>, usize)>), ClientError> {
    let db = client.system_database().await?;
    let group = parsed.group_by_status.then_some(visibility::STATUS_SQL);
    let rows = db.count_runs_where(&parsed.filter, group).await?;
    let mut total = 0usize;
    let mut groups = Vec::new();
    for (value, n) in rows {
        let n = usize::try_from(n).unwrap_or(0);
        total += n;
        if parsed.group_by_status {
            let v = value.unwrap_or_default();
            let payload = v
                .to_search_attribute_payload(IndexedValueType::Keyword)
                .map_err(|e| invalid_query(format!("cannot encode group value: {e}")))?;
            groups.push((vec![payload], n));
        }
    }
    Ok((total, groups))
}

impl Client {
    /// Lists the workflow runs matching a visibility query (see [`crate::visibility`] for the
    /// supported subset), newest first. Standalone activities are not included. The stream
    /// pages lazily; `limit` caps it. A refused query yields one `InvalidArgument` error.
    pub fn list_workflows(
        &self,
        query: impl Into<String>,
        opts: WorkflowListOptions,
    ) -> ListWorkflowsStream {
        let query = query.into();
        let filter = opts
            .rpc_options
            .refuse_metadata()
            .map_err(ClientError::from)
            .and_then(|()| {
                visibility::parse(&query, Target::Workflows, false).map_err(invalid_query)
            })
            .map(|p| p.filter);
        let inner = page_rows(self.clone(), filter, opts.limit, |row, client| async move {
            let dc = client.data_converter().clone();
            let (raw, _) = execution_info(&row, &dc).await?;
            Ok(WorkflowExecution {
                raw,
                data_converter: dc,
            })
        });
        ListWorkflowsStream { inner }
    }

    /// Counts the workflow runs matching a visibility query; a trailing
    /// `GROUP BY ExecutionStatus` also counts per status. Standalone activities are not counted.
    ///
    /// # Errors
    /// `InvalidArgument` for a query outside the supported subset; database failures.
    pub async fn count_workflows(
        &self,
        query: impl Into<String>,
        opts: WorkflowCountOptions,
    ) -> Result<WorkflowExecutionCount, ClientError> {
        opts.rpc_options.refuse_metadata()?;
        let parsed =
            visibility::parse(&query.into(), Target::Workflows, true).map_err(invalid_query)?;
        let (count, groups) = count(self, parsed).await?;
        Ok(WorkflowExecutionCount {
            count,
            groups: groups
                .into_iter()
                .map(|(values, count)| WorkflowCountAggregationGroup { values, count })
                .collect(),
        })
    }
}
