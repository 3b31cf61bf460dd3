//! PostgreSQL: deploys of different applications in a batch, inserted
//! together and decided in one read, two statements a group where one at a
//! time takes two a deploy (each statement is a round trip there; SQLite
//! applies deploys one at a time).

use std::collections::HashSet;
use std::sync::OnceLock;

use super::facts::{context_sql, environment, image_text, DeployContext, Prepared};
use super::{statement, Recording};
use crate::events::{CommitSha, Deploy, Event};
use crate::ledger::{Delivery, Disposition};
use crate::store::sql::{DbError, Sql};

/// How many deliveries, from the one being recorded, a group is looked for
/// in. A delivery that finds no partner is looked past again by the next
/// one: the bound keeps that from growing with the square of a large batch
/// of one application's deploys.
const GROUP_STRETCH: usize = 64;

/// PostgreSQL: when the delivery being recorded is a lone deploy naming
/// its image, inserts it together with the lone deploys after it in the
/// batch (the next [`GROUP_STRETCH`]) that can go with it, and leaves what each did in `recording`
/// ([`prepare_deploys`]). A deploy goes with the group unless its
/// application is already the group's or a skipped delivery's: a delivery
/// before it in the batch that touches its application is applied before
/// it, as in order. Skipped, and touching nothing: a delivery without
/// events or recorded before. Skipped, and its applications kept out: any
/// other delivery with events, one whose id came before in the group's
/// stretch (it will be a duplicate, and must not insert anything), and a
/// deploy of an earlier group (inserted, its consequences not yet
/// applied). A group of one is left to the ordinary path: it saves no
/// round trip.
pub(super) fn prepare_group(
    tx: &mut dyn Sql,
    deliveries: &[&Delivery],
    link_window: i64,
    recording: &mut Recording<'_>,
) -> Result<(), DbError> {
    /// The deploy of a delivery whose only event is a deploy naming its image.
    fn lone_deploy(delivery: &Delivery) -> Option<&Deploy> {
        match &delivery.disposition {
            Disposition::Events(events) => match events.as_slice() {
                [Event::Deploy(deploy)] if deploy.image_sha.is_some() => Some(deploy),
                _ => None,
            },
            _ => None,
        }
    }
    if lone_deploy(deliveries[recording.current]).is_none() {
        return Ok(());
    }
    let mut group = Vec::new();
    let mut apps = HashSet::new();
    let mut ids = HashSet::new();
    let stretch = deliveries
        .iter()
        .enumerate()
        .skip(recording.current)
        .take(GROUP_STRETCH);
    for (index, delivery) in stretch {
        let Disposition::Events(events) = &delivery.disposition else {
            continue;
        };
        let id = (delivery.source, delivery.id.as_str());
        if recording.recorded.contains(&id) {
            continue;
        }
        let first_of_id = ids.insert(id);
        match lone_deploy(delivery) {
            Some(deploy)
                if first_of_id
                    && !recording.prepared.contains_key(&index)
                    && apps.insert(deploy.app.as_str()) =>
            {
                group.push((index, deploy, delivery.id.as_str()));
            }
            _ => apps.extend(events.iter().map(|e| e.app().as_str())),
        }
    }
    if group.len() < 2 {
        return Ok(());
    }
    let deploys: Vec<_> = group.iter().map(|(_, deploy, id)| (*deploy, *id)).collect();
    let prepared = prepare_deploys(tx, &deploys, link_window)?;
    for ((index, ..), prepared) in group.iter().zip(prepared) {
        recording.prepared.insert(*index, prepared);
    }
    Ok(())
}

/// PostgreSQL: inserts the deploys of `group`, each naming its image and
/// each of another application, in one statement, and reads what each new
/// one decides in a second: two round trips for the group where one at a
/// time takes two per deploy. What follows from each (lead times,
/// decisions, recoveries) is then applied in turn, as for a deploy alone.
///
/// This is what they would do one at a time, because the facts of one
/// application never read another's: every statement of the rules names
/// its application. So a deploy's insert and read meet the same rows
/// whether the others of the group, of other applications, were applied
/// before them or not. Two deploys of one application never share a group.
///
/// A deploy is `(deploy, delivery id)`; the answers are in `group`'s order.
pub(super) fn prepare_deploys(
    tx: &mut dyn Sql,
    group: &[(&Deploy, &str)],
    link_window: i64,
) -> Result<Vec<Prepared>, DbError> {
    let rows: Vec<serde_json::Value> = group
        .iter()
        .map(|(deploy, delivery_id)| {
            serde_json::json!([
                deploy.app.as_str(),
                deploy.namespace.as_str(),
                deploy.time.seconds(),
                image_text(deploy.image_sha.as_ref()),
                deploy.commit.as_ref().map(CommitSha::as_str).unwrap_or(""),
                environment(deploy),
                delivery_id,
                i64::from(deploy.rework),
            ])
        })
        .collect();
    let inserted: HashSet<String> = tx
        .rows(
            "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id, \
             rework_reported) \
             SELECT e.v->>0, e.v->>1, CAST(e.v->>2 AS BIGINT), e.v->>3, e.v->>4, e.v->>5, e.v->>6, \
               CAST(e.v->>7 AS BIGINT) \
             FROM jsonb_array_elements(CAST(CAST(?1 AS TEXT) AS jsonb)) AS e(v) \
             ON CONFLICT DO NOTHING RETURNING app",
            &[&encode(&rows)?],
            |r| r.get(0),
        )?
        .into_iter()
        .collect();
    let mut prepared: Vec<Prepared> = group
        .iter()
        .map(|(deploy, _)| match inserted.contains(deploy.app.as_str()) {
            true => Prepared::New(DeployContext::default()),
            false => Prepared::Duplicate,
        })
        .collect();
    // The deploys read, by their position in the array of the read.
    let new: Vec<usize> = (0..group.len())
        .filter(|&i| matches!(prepared[i], Prepared::New(_)))
        .collect();
    if !new.is_empty() {
        let asked: Vec<&serde_json::Value> = new.iter().map(|&i| &rows[i]).collect();
        tx.each(
            group_context_sql(),
            &[&encode(&asked)?, &link_window],
            &mut |r| {
                // The position (from 1) of a deploy in `asked`.
                let n = r.get::<i64>(0)?;
                let deploy = usize::try_from(n - 1).ok().and_then(|i| new.get(i));
                match deploy.map(|&i| &mut prepared[i]) {
                    Some(Prepared::New(context)) => context.add(r, 1),
                    _ => Err(DbError::Broken(format!(
                        "a context row for deploy {n} of {}",
                        new.len()
                    ))),
                }
            },
        )?;
    }
    Ok(prepared)
}

fn encode(rows: &[impl serde::Serialize]) -> Result<String, DbError> {
    serde_json::to_string(rows)
        .map_err(|e| DbError::Broken(format!("a batch's deploys cannot be encoded: {e}")))
}

/// [`context_sql`] for each deploy of a JSON array (?1, as
/// [`prepare_deploys`] writes it; `link_window` is ?2), its rows led by
/// the deploy's position in the array, from 1.
fn group_context_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    statement(&SQL, || {
        // The parameters of one deploy's read become the columns of `g`
        // (from ?8 down, so that ?1 does not also match the start of ?10).
        let mut each = context_sql().to_owned();
        for (param, column) in [
            ("?8", "g.ns"),
            ("?7", "g.hi"),
            ("?6", "g.win"),
            ("?5", "g.lo"),
            ("?4", "g.t"),
            ("?3", "g.sha"),
            ("?2", "g.image"),
            ("?1", "g.app"),
        ] {
            each = each.replace(param, column);
        }
        format!(
            "SELECT g.n, ctx.* FROM (SELECT e.n, e.v->>0 AS app, e.v->>1 AS ns, CAST(e.v->>2 AS BIGINT) AS t, \
               e.v->>3 AS image, e.v->>4 AS sha, CAST(e.v->>2 AS BIGINT) - CAST(?2 AS BIGINT) AS lo, \
               CAST(?2 AS BIGINT) AS win, CAST(e.v->>2 AS BIGINT) + CAST(?2 AS BIGINT) AS hi \
             FROM jsonb_array_elements(CAST(CAST(?1 AS TEXT) AS jsonb)) WITH ORDINALITY AS e(v, n)) AS g \
             CROSS JOIN LATERAL ({each}) AS ctx"
        )
    })
}
