//! Visibility queries: the subset of Temporal's list filter language that `list_workflows`,
//! `count_workflows`, `list_activities` and `count_activities` accept, parsed into a
//! [`dbos_core::RunFilter`] whose SQL is made of fixed fragments and whose values are bound.
//!
//! Accepted: comparisons (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`), `[NOT] IN (…)`, `STARTS_WITH`,
//! `[NOT] BETWEEN … AND …`, `IS [NOT] NULL`, `AND`, `OR`, `NOT`, parentheses, and a trailing
//! `GROUP BY ExecutionStatus` (counts only), over `ExecutionStatus`, `WorkflowType` /
//! `ActivityType`, `WorkflowId` / `ActivityId`, `RunId`, `TaskQueue`, `StartTime`, `CloseTime`
//! and custom search attributes. Anything else (`ORDER BY`, other system attributes, `LIKE`) is
//! refused with an `InvalidArgument` naming what is not supported.

use dbos_core::{FilterValue, RunFilter};

/// Which executions a query looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Workflow runs (standalone activities excluded).
    Workflows,
    /// Standalone activities (workflow runs excluded).
    Activities,
}

/// A parsed query: the filter, and whether counts are grouped by execution status.
#[derive(Debug, Clone)]
pub(crate) struct ParsedQuery {
    /// The filter (includes the workflows/activities split).
    pub filter: RunFilter,
    /// `GROUP BY ExecutionStatus`.
    pub group_by_status: bool,
}

/// Temporal's execution status of a `workflow_status` row, as text (`Running`, `Completed`,
/// `Failed`, `Canceled`, `Terminated`, `ContinuedAsNew`, `TimedOut`); see the protocol's table of
/// terminal outcomes (the `error` column of ERROR rows starts with `{"kind":"…"`).
pub(crate) const STATUS_SQL: &str = "(CASE WHEN status = 'SUCCESS' THEN 'Completed' \
     WHEN status = 'CANCELLED' THEN 'Terminated' \
     WHEN status = 'ERROR' THEN (CASE \
        WHEN error LIKE '{\"kind\":\"canceled\"%' THEN 'Canceled' \
        WHEN error LIKE '{\"kind\":\"continued_as_new\"%' THEN 'ContinuedAsNew' \
        WHEN error LIKE '{\"kind\":\"timed_out\"%' THEN 'TimedOut' \
        ELSE 'Failed' END) \
     ELSE 'Running' END)";

const STATUSES: &[&str] = &[
    "Running",
    "Completed",
    "Failed",
    "Canceled",
    "Terminated",
    "ContinuedAsNew",
    "TimedOut",
];

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid visibility query: {0}")]
pub(crate) struct QueryError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError(msg.into()))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
    LParen,
    RParen,
    Comma,
}

fn tokenize(q: &str) -> Result<Vec<Tok>, QueryError> {
    let mut out = Vec::new();
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' | '"' | '`' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err(format!("unterminated {quote}-quoted text")),
                        Some('\\') if chars.get(i + 1).is_some() => {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&ch) if ch == quote => {
                            // A doubled quote stands for itself.
                            if chars.get(i + 1) == Some(&quote) {
                                s.push(quote);
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(if quote == '`' {
                    Tok::Ident(s)
                } else {
                    Tok::Str(s)
                });
            }
            '=' => {
                out.push(Tok::Sym("="));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Sym("!="));
                i += 2;
            }
            '<' => {
                match chars.get(i + 1) {
                    Some('=') => {
                        out.push(Tok::Sym("<="));
                        i += 2;
                    }
                    Some('>') => {
                        out.push(Tok::Sym("!="));
                        i += 2;
                    }
                    _ => {
                        out.push(Tok::Sym("<"));
                        i += 1;
                    }
                };
            }
            '>' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Tok::Sym(">="));
                    i += 2;
                } else {
                    out.push(Tok::Sym(">"));
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_ascii_digit() || *d == '.' || *d == 'e' || *d == 'E')
                {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_' || *d == '.')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return err(format!("unexpected character `{other}`")),
        }
    }
    Ok(out)
}

/// A literal of the query.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
}

impl Lit {
    fn json(&self) -> serde_json::Value {
        match self {
            Lit::Str(s) => serde_json::Value::String(s.clone()),
            Lit::Num(n) => serde_json::Value::Number(n.clone()),
            Lit::Bool(b) => serde_json::Value::Bool(*b),
        }
    }
}

/// What an attribute name refers to.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Status,
    Type,
    Id,
    RunId,
    TaskQueue,
    StartTime,
    CloseTime,
    Custom(String),
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    target: Target,
    binds: &'a mut Vec<FilterValue>,
}

fn is_kw(t: Option<&Tok>, kw: &str) -> bool {
    matches!(t, Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_kw(&self, kw: &str) -> bool {
        is_kw(self.peek(), kw)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn bind(&mut self, v: FilterValue) -> &'static str {
        self.binds.push(v);
        "$?"
    }

    fn expr(&mut self) -> Result<String, QueryError> {
        let mut parts = vec![self.and()?];
        while self.peek_kw("OR") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            format!("({})", parts.join(" OR "))
        })
    }

    fn and(&mut self) -> Result<String, QueryError> {
        let mut parts = vec![self.unary()?];
        while self.peek_kw("AND") {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            format!("({})", parts.join(" AND "))
        })
    }

    fn unary(&mut self) -> Result<String, QueryError> {
        if self.peek_kw("NOT") {
            self.pos += 1;
            let inner = self.unary()?;
            return Ok(format!("(NOT COALESCE({inner}, FALSE))"));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let inner = self.expr()?;
            if self.next() != Some(Tok::RParen) {
                return err("missing `)`");
            }
            return Ok(inner);
        }
        self.predicate()
    }

    fn field(&mut self) -> Result<Field, QueryError> {
        let name = match self.next() {
            Some(Tok::Ident(s)) => s,
            other => return err(format!("expected an attribute name, found {other:?}")),
        };
        let wf = self.target == Target::Workflows;
        Ok(match name.as_str() {
            "ExecutionStatus" => Field::Status,
            "WorkflowType" if wf => Field::Type,
            "ActivityType" if !wf => Field::Type,
            "WorkflowId" if wf => Field::Id,
            "ActivityId" if !wf => Field::Id,
            "RunId" => Field::RunId,
            "TaskQueue" => Field::TaskQueue,
            "StartTime" => Field::StartTime,
            "ScheduleTime" if !wf => Field::StartTime,
            "CloseTime" => Field::CloseTime,
            "WorkflowType" | "WorkflowId" | "ActivityType" | "ActivityId" => {
                return err(format!(
                    "`{name}` does not apply to {}",
                    if wf { "workflows" } else { "activities" }
                ));
            }
            "ExecutionTime"
            | "ExecutionDuration"
            | "HistoryLength"
            | "HistorySizeBytes"
            | "StateTransitionCount"
            | "ParentWorkflowId"
            | "ParentRunId"
            | "RootWorkflowId"
            | "RootRunId"
            | "BuildIds"
            | "BatcherUser"
            | "TemporalChangeVersion"
            | "TemporalSchedulePaused"
            | "TemporalScheduledById"
            | "TemporalScheduledStartTime"
            | "TemporalWorkerDeploymentVersion"
            | "TemporalWorkflowVersioningBehavior"
            | "TemporalWorkerDeployment"
            | "TemporalPauseInfo"
            | "TemporalNamespaceDivision" => {
                return err(format!(
                    "the system attribute `{name}` is not supported by DBOSify; supported: \
                     ExecutionStatus, {}, RunId, TaskQueue, StartTime, CloseTime and custom search attributes",
                    if wf {
                        "WorkflowType, WorkflowId"
                    } else {
                        "ActivityType, ActivityId"
                    }
                ));
            }
            _ => Field::Custom(name),
        })
    }

    fn literal(&mut self) -> Result<Lit, QueryError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Num(n)) => {
                let v: serde_json::Value = serde_json::from_str(&n)
                    .map_err(|_| QueryError(format!("`{n}` is not a number")))?;
                match v {
                    serde_json::Value::Number(n) => Ok(Lit::Num(n)),
                    _ => err(format!("`{n}` is not a number")),
                }
            }
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Lit::Bool(true)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Lit::Bool(false)),
            other => err(format!("expected a value, found {other:?}")),
        }
    }

    /// The SQL of `field op value` for one literal.
    fn compare(&mut self, field: &Field, op: &str, lit: Lit) -> Result<String, QueryError> {
        let sql_op = if op == "!=" { "<>" } else { op };
        let text = |lit: &Lit, what: &str| match lit {
            Lit::Str(s) => Ok(s.clone()),
            other => err(format!("{what} takes a quoted string, not {other:?}")),
        };
        Ok(match field {
            Field::Status => {
                let v = text(&lit, "ExecutionStatus")?;
                let Some(canon) = STATUSES.iter().find(|s| s.eq_ignore_ascii_case(&v)) else {
                    return err(format!(
                        "unknown ExecutionStatus `{v}`; one of {}",
                        STATUSES.join(", ")
                    ));
                };
                if !matches!(op, "=" | "!=") {
                    return err("ExecutionStatus supports only `=`, `!=` and IN");
                }
                let p = self.bind(FilterValue::Text(canon.to_string()));
                format!("{STATUS_SQL} {sql_op} {p}")
            }
            Field::Type | Field::Id | Field::RunId | Field::TaskQueue => {
                let v = text(&lit, "this attribute")?;
                let col = text_column(field);
                let p = self.bind(FilterValue::Text(v));
                format!("{col} {sql_op} {p}")
            }
            Field::StartTime | Field::CloseTime => {
                let v = text(&lit, "a time attribute")?;
                if !looks_like_timestamp(&v) {
                    return err(format!(
                        "`{v}` is not a timestamp; use RFC 3339, e.g. '2024-01-31T12:00:00Z'"
                    ));
                }
                let col = if *field == Field::StartTime {
                    "created_at"
                } else {
                    "completed_at"
                };
                let p = self.bind(FilterValue::Text(v));
                format!("{col} {sql_op} (EXTRACT(EPOCH FROM {p}::timestamptz) * 1000)::bigint")
            }
            Field::Custom(key) => {
                let k = self.bind(FilterValue::Text(key.clone()));
                let v = self.bind(FilterValue::Json(lit.json()));
                let attr = format!("(attributes->'sav'->{k})");
                match op {
                    "=" | "!=" => {
                        // Containment: equality for scalars; membership for keyword lists
                        // (a JSON array contains a scalar that is one of its elements).
                        let eq = format!("({attr} @> {v}::jsonb)");
                        if op == "=" {
                            eq
                        } else {
                            format!("(NOT COALESCE({eq}, FALSE))")
                        }
                    }
                    _ => format!("{attr} {sql_op} {v}::jsonb"),
                }
            }
        })
    }

    fn predicate(&mut self) -> Result<String, QueryError> {
        let field = self.field()?;
        let negate = if self.peek_kw("NOT") {
            self.pos += 1;
            true
        } else {
            false
        };
        let not = |s: String| {
            if negate {
                format!("(NOT COALESCE({s}, FALSE))")
            } else {
                s
            }
        };
        match self.next() {
            Some(Tok::Sym(op)) if !negate => {
                let lit = self.literal()?;
                self.compare(&field, op, lit)
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("IN") => {
                if self.next() != Some(Tok::LParen) {
                    return err("IN needs a parenthesised list of values");
                }
                let mut parts = Vec::new();
                loop {
                    let lit = self.literal()?;
                    parts.push(self.compare(&field, "=", lit)?);
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RParen) => break,
                        other => return err(format!("expected `,` or `)` in IN, found {other:?}")),
                    }
                }
                Ok(not(format!("({})", parts.join(" OR "))))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("BETWEEN") => {
                let lo = self.literal()?;
                if !self.peek_kw("AND") {
                    return err("BETWEEN needs `AND`");
                }
                self.pos += 1;
                let hi = self.literal()?;
                let a = self.compare(&field, ">=", lo)?;
                let b = self.compare(&field, "<=", hi)?;
                Ok(not(format!("({a} AND {b})")))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("STARTS_WITH") && !negate => {
                let lit = self.literal()?;
                let Lit::Str(prefix) = lit else {
                    return err("STARTS_WITH takes a quoted string");
                };
                let col = match &field {
                    Field::Type | Field::Id | Field::RunId | Field::TaskQueue => {
                        text_column(&field).to_string()
                    }
                    Field::Custom(key) => {
                        let k = self.bind(FilterValue::Text(key.clone()));
                        format!("(attributes->'sav'->>{k})")
                    }
                    _ => return err("STARTS_WITH applies to text attributes only"),
                };
                let p = self.bind(FilterValue::Text(escape_like(&prefix)));
                Ok(format!("{col} LIKE {p} || '%' ESCAPE '\\'"))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("IS") && !negate => {
                let is_not = if self.peek_kw("NOT") {
                    self.pos += 1;
                    true
                } else {
                    false
                };
                if !self.peek_kw("NULL") {
                    return err("IS must be followed by [NOT] NULL");
                }
                self.pos += 1;
                let col = match &field {
                    Field::Custom(key) => {
                        let k = self.bind(FilterValue::Text(key.clone()));
                        format!("NULLIF(attributes->'sav'->{k}, 'null'::jsonb)")
                    }
                    Field::CloseTime => "completed_at".to_string(),
                    Field::StartTime => "created_at".to_string(),
                    Field::Status => STATUS_SQL.to_string(),
                    other => text_column(other).to_string(),
                };
                Ok(format!(
                    "({col} IS {}NULL)",
                    if is_not { "NOT " } else { "" }
                ))
            }
            Some(Tok::Ident(kw)) if kw.eq_ignore_ascii_case("LIKE") => {
                err("LIKE is not supported (as in Temporal); use STARTS_WITH")
            }
            other => err(format!(
                "expected an operator (=, !=, <, <=, >, >=, IN, BETWEEN, STARTS_WITH, IS NULL) after an attribute, found {other:?}"
            )),
        }
    }
}

fn text_column(field: &Field) -> &'static str {
    match field {
        Field::Type => "name",
        Field::Id => "COALESCE(attributes->>'workflow_id', workflow_uuid)",
        Field::RunId => "workflow_uuid",
        Field::TaskQueue => "COALESCE(attributes->>'task_queue', queue_name)",
        _ => "NULL",
    }
}

/// A cheap shape check before Postgres parses the timestamp: `YYYY-MM-DD` then anything.
fn looks_like_timestamp(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

fn escape_like(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Parses a visibility query for `target`. `allow_group_by`: counts accept a trailing
/// `GROUP BY ExecutionStatus`.
pub(crate) fn parse(
    query: &str,
    target: Target,
    allow_group_by: bool,
) -> Result<ParsedQuery, QueryError> {
    let toks = tokenize(query)?;
    let mut binds = Vec::new();
    let mut p = Parser {
        toks,
        pos: 0,
        target,
        binds: &mut binds,
    };
    let starts_with_clause = p.peek_kw("GROUP") || p.peek_kw("ORDER");
    let cond = if p.peek().is_none() || starts_with_clause {
        None
    } else {
        Some(p.expr()?)
    };
    let mut group_by_status = false;
    if p.peek_kw("GROUP") {
        p.pos += 1;
        if !p.peek_kw("BY") {
            return err("GROUP must be followed by BY");
        }
        p.pos += 1;
        match p.next() {
            Some(Tok::Ident(f)) if f == "ExecutionStatus" => {}
            other => {
                return err(format!(
                    "only `GROUP BY ExecutionStatus` is supported, found {other:?}"
                ));
            }
        }
        if !allow_group_by {
            return err("GROUP BY is only supported when counting");
        }
        group_by_status = true;
    }
    if p.peek_kw("ORDER") {
        return err("ORDER BY is not supported by DBOSify; results are newest first");
    }
    if let Some(t) = p.peek() {
        return err(format!("unexpected {t:?} after the end of the filter"));
    }
    let kind = match target {
        Target::Workflows => "(attributes IS NULL OR NOT (attributes ? 'activity'))",
        Target::Activities => "(attributes IS NOT NULL AND (attributes ? 'activity'))",
    };
    let sql = match cond {
        Some(c) => format!("{kind} AND COALESCE({c}, FALSE)"),
        None => kind.to_string(),
    };
    Ok(ParsedQuery {
        filter: RunFilter { sql, binds },
        group_by_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> ParsedQuery {
        let p = parse(q, Target::Workflows, true).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(
            p.filter.sql.matches("$?").count(),
            p.filter.binds.len(),
            "one placeholder per bound value: {q} -> {}",
            p.filter.sql
        );
        p
    }

    #[test]
    fn accepted_subset_binds_every_value() {
        let p = ok("TaskQueue = 'q' AND (WorkflowType = \"T\" OR ExecutionStatus != 'running')");
        assert_eq!(
            p.filter.binds,
            vec![
                FilterValue::Text("q".into()),
                FilterValue::Text("T".into()),
                FilterValue::Text("Running".into()),
            ]
        );
        assert_eq!(p.filter.sql.matches("$?").count(), 3);
        assert!(!p.filter.sql.contains("'q'"), "{}", p.filter.sql);
        let p = ok(
            "WorkflowId IN ('a', 'b') AND CustomKeywordField STARTS_WITH 'x_%' \
                    AND CustomIntField BETWEEN 1 AND 5 AND StartTime > '2024-01-01T00:00:00Z' \
                    AND CloseTime IS NULL AND NOT `Key With Space` = true GROUP BY ExecutionStatus",
        );
        assert!(p.group_by_status);
        assert!(
            p.filter
                .binds
                .contains(&FilterValue::Text("x\\_\\%".into()))
        );
        assert!(
            p.filter
                .binds
                .contains(&FilterValue::Text("Key With Space".into()))
        );
        assert!(ok("").filter.binds.is_empty());
        assert!(ok("GROUP BY ExecutionStatus").group_by_status);
        // Injection attempts stay values.
        let p = ok("WorkflowId = 'x'' OR 1=1 --'");
        assert_eq!(
            p.filter.binds,
            vec![FilterValue::Text("x' OR 1=1 --".into())]
        );
    }

    #[test]
    fn refusals_are_clear() {
        for (q, needle) in [
            ("WorkflowId = 'a' ORDER BY StartTime", "ORDER BY"),
            ("ExecutionTime > '2024-01-01'", "ExecutionTime"),
            ("ExecutionStatus = 'Sleeping'", "unknown ExecutionStatus"),
            ("WorkflowId LIKE 'a%'", "LIKE"),
            (
                "WorkflowId = 'a' GROUP BY WorkflowType",
                "GROUP BY ExecutionStatus",
            ),
            ("StartTime > 'yesterday'", "timestamp"),
            ("(WorkflowId = 'a'", ")"),
            ("WorkflowId = 'a' garbage", "unexpected"),
            ("ActivityId = 'a'", "does not apply"),
            ("WorkflowId = 'unterminated", "unterminated"),
        ] {
            let e = parse(q, Target::Workflows, true).unwrap_err();
            assert!(e.to_string().contains(needle), "{q}: {e}");
        }
        let e = parse("GROUP BY ExecutionStatus", Target::Workflows, false).unwrap_err();
        assert!(e.to_string().contains("counting"), "{e}");
        assert!(parse("ActivityId = 'a'", Target::Activities, false).is_ok());
    }
}
