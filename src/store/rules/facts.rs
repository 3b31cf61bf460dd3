//! The facts of one event: commits, deploys, commit→image links and
//! failures, each inserted against its identity, and the lead-time
//! observations they complete.

use std::sync::OnceLock;

use super::decisions::{
    apply_decisions, failed_now, linked_recovery, observe_linked_recoveries, observe_recoveries,
    redecide, rework_now, Decision,
};
use super::{statement, FAILED_DEPLOYMENT_RECOVERY, LEAD_TIME, TIME_TO_RESTORE};
use crate::events::{
    App, Commit, CommitLink, CommitSha, Deploy, Event, Failure, FailureChange, ImageSha, Link,
    Namespace,
};
use crate::ledger::{Effect, ShownCommit};
use crate::store::sql::{DbError, Dialect, Row, Sql};

/// A failure is open from its creation until a resolution at or after it.
fn open_since(created: Option<i64>, resolved: Option<i64>) -> Option<i64> {
    created.filter(|c| resolved.is_none_or(|r| r < *c))
}

/// What applying one event did.
pub(super) enum EventResult {
    New(Vec<Effect>),
    Duplicate,
    Outdated { superseded_by: String },
}

/// Applies `event`; `prepared` is what [`super::groups::prepare_deploys`] already did for
/// it (a deploy inserted with others of its batch), if anything.
pub(super) fn apply_event(
    tx: &mut dyn Sql,
    event: &Event,
    delivery_id: &str,
    link_window: i64,
    prepared: Option<Prepared>,
) -> Result<EventResult, DbError> {
    match event {
        Event::Commit(commit) => apply_commit(tx, commit, delivery_id),
        Event::Deploy(deploy) => apply_deploy(tx, deploy, delivery_id, link_window, prepared),
        Event::Failure(failure) => apply_failure(tx, failure, delivery_id, link_window),
        Event::Link(link) => apply_link(tx, link, delivery_id),
    }
}

pub(super) fn image_text(image_sha: Option<&ImageSha>) -> String {
    image_sha.map(ToString::to_string).unwrap_or_default()
}

/// Records a lead-time observation for `commit` unless one exists; returns
/// the effect when it is new. Negative spans (clock skew) are not observed.
pub(super) fn observe_once(
    tx: &mut dyn Sql,
    kind: &str,
    app: &App,
    subject: &str,
    seconds: i64,
) -> Result<Option<Effect>, DbError> {
    if seconds < 0 {
        return Ok(None);
    }
    let inserted = tx.execute(
        "INSERT INTO observations (kind, app, subject, seconds) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        &[&kind, &app.as_str(), &subject, &seconds],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    let app = app.clone();
    let seconds = seconds as f64;
    Ok(Some(match kind {
        LEAD_TIME => Effect::LeadTime { app, seconds },
        FAILED_DEPLOYMENT_RECOVERY => Effect::FailedDeploymentRecovery { app, seconds },
        _ => Effect::TimeToRestore { app, seconds },
    }))
}

/// [`observe_once`] for each (subject, seconds) of `spans`; the effects of
/// those that are new.
pub(super) fn observe_each(
    tx: &mut dyn Sql,
    kind: &str,
    app: &App,
    spans: impl IntoIterator<Item = (String, i64)>,
) -> Result<Vec<Effect>, DbError> {
    let mut effects = Vec::new();
    for (subject, seconds) in spans {
        effects.extend(observe_once(tx, kind, app, &subject, seconds)?);
    }
    Ok(effects)
}

fn apply_commit(
    tx: &mut dyn Sql,
    commit: &Commit,
    delivery_id: &str,
) -> Result<EventResult, DbError> {
    let app = commit.app.as_str();
    let image = image_text(commit.image_sha.as_ref());
    let inserted = tx.execute(
        "INSERT INTO commits (app, commit_sha, image_sha, namespace, commit_link, time, delivery_id, pushed_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?8 THEN \
           (SELECT COALESCE(MAX(pushed_seq), 0) + 1 FROM commits WHERE app = ?1 AND pushed_seq IS NOT NULL) END) \
         ON CONFLICT DO NOTHING",
        &[
            &app,
            &commit.commit.as_str(),
            &image,
            &commit
                .namespace
                .as_ref()
                .map(Namespace::as_str)
                .unwrap_or(""),
            &commit
                .commit_link
                .as_ref()
                .map(CommitLink::as_str)
                .unwrap_or(""),
            &commit.time.seconds(),
            &delivery_id,
            &commit.pushed,
        ],
    )?;
    if inserted == 0 {
        return Ok(EventResult::Duplicate);
    }
    let mut effects = vec![Effect::Commit(ShownCommit {
        app: commit.app.clone(),
        commit: commit.commit.clone(),
        image_sha: commit.image_sha,
        namespace: commit.namespace.clone(),
        commit_link: commit.commit_link.clone(),
        time: commit.time.seconds(),
    })];
    // A commit that names its image is also a commit→digest link.
    if let Some(image_sha) = commit.image_sha {
        let link = Link {
            app: commit.app.clone(),
            commit: commit.commit.clone(),
            image_sha,
            time: commit.time,
        };
        if let EventResult::New(mut more) = apply_link(tx, &link, delivery_id)? {
            effects.append(&mut more);
        }
    }
    // A deploy may have arrived first: its earliest time joins this commit,
    // whether it names the commit, its image or an image linked to it.
    let deployed: Option<i64> = tx.value(
        "SELECT MIN(time) FROM (\
           SELECT time FROM deploys WHERE app = ?1 AND image_sha = ?2 AND ?2 <> '' \
           UNION ALL SELECT time FROM deploys WHERE app = ?1 AND commit_sha = ?3 AND commit_sha <> '' \
           UNION ALL SELECT d.time FROM links AS l JOIN deploys AS d \
             ON d.app = l.app AND d.image_sha = l.image_sha \
             WHERE l.app = ?1 AND l.commit_sha = ?3) AS deployed",
        &[&app, &image, &commit.commit.as_str()],
    )?;
    if let Some(deployed) = deployed {
        let span = deployed - commit.time.seconds();
        effects.extend(observe_once(
            tx,
            LEAD_TIME,
            &commit.app,
            commit.commit.as_str(),
            span,
        )?);
        if commit.pushed {
            // The deploy also shipped the commits pushed before this one.
            effects.extend(observe_shipped(tx, &commit.app, &commit.commit, deployed)?);
        }
    }
    Ok(EventResult::New(effects))
}

/// Lead time for every pushed commit a deploy of `commit` at `deployed`
/// shipped: those pushed to the branch after the last commit an earlier
/// deploy named, up to and including `commit`, that have none yet.
fn observe_shipped(
    tx: &mut dyn Sql,
    app: &App,
    commit: &CommitSha,
    deployed: i64,
) -> Result<Vec<Effect>, DbError> {
    let position: Option<i64> = tx.value(
        "SELECT MIN(pushed_seq) FROM commits WHERE app = ?1 AND commit_sha = ?2 AND pushed_seq IS NOT NULL",
        &[&app.as_str(), &commit.as_str()],
    )?;
    let Some(seq) = position else {
        return Ok(Vec::new());
    };
    let since: i64 = tx
        .row(
            "SELECT c.pushed_seq FROM commits AS c INDEXED BY commits_by_pushed_seq \
             WHERE c.app = ?1 AND c.pushed_seq IS NOT NULL AND c.pushed_seq < ?2 AND EXISTS (\
               SELECT 1 FROM deploys d WHERE d.app = c.app AND d.commit_sha = c.commit_sha \
                 AND d.commit_sha <> '') \
             ORDER BY c.pushed_seq DESC LIMIT 1",
            &[&app.as_str(), &seq],
            |r| r.get(0),
        )?
        .unwrap_or(0);
    let commits: Vec<(String, i64)> = tx.rows(
        "SELECT commit_sha, MIN(time) FROM commits INDEXED BY commits_by_pushed_seq \
         WHERE app = ?1 AND pushed_seq IS NOT NULL AND pushed_seq > ?2 AND pushed_seq <= ?3 \
         GROUP BY commit_sha",
        &[&app.as_str(), &since, &seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    observe_lead_times(tx, app, commits, deployed)
}

/// A lead-time observation from a deploy at `deployed` for each (commit,
/// commit time) that has none yet.
fn observe_lead_times(
    tx: &mut dyn Sql,
    app: &App,
    commits: Vec<(String, i64)>,
    deployed: i64,
) -> Result<Vec<Effect>, DbError> {
    let spans = commits
        .into_iter()
        .map(|(commit_sha, commit_time)| (commit_sha, deployed - commit_time));
    observe_each(tx, LEAD_TIME, app, spans)
}

/// The commits (sha, time; a commit can be in more than one image) of app
/// `?1` built into image `?2` (`''`: none), linked to it, or named `?3`.
const BUILT: &str = "SELECT commit_sha, time FROM commits INDEXED BY commits_by_image \
       WHERE app = ?1 AND image_sha = ?2 AND ?2 <> '' \
     UNION ALL SELECT commit_sha, time FROM commits WHERE app = ?1 AND commit_sha = ?3 \
     UNION ALL SELECT c.commit_sha, c.time FROM links AS l JOIN commits AS c \
       ON c.app = l.app AND c.commit_sha = l.commit_sha \
       WHERE l.app = ?1 AND l.image_sha = ?2 AND ?2 <> ''";

/// Every commit built into `image` (`''`: none), linked to it, or named
/// `commit` that has no lead time yet gets one from a deploy at `deployed`.
fn observe_deployed(
    tx: &mut dyn Sql,
    app: &App,
    image: &str,
    commit: &str,
    deployed: i64,
) -> Result<Vec<Effect>, DbError> {
    static SQL: OnceLock<String> = OnceLock::new();
    let commits: Vec<(String, i64)> = tx.rows(
        statement(&SQL, || {
            format!("SELECT commit_sha, MIN(time) FROM ({BUILT}) AS built GROUP BY commit_sha")
        }),
        &[&app.as_str(), &image, &commit],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    observe_lead_times(tx, app, commits, deployed)
}

fn apply_deploy(
    tx: &mut dyn Sql,
    deploy: &Deploy,
    delivery_id: &str,
    link_window: i64,
    prepared: Option<Prepared>,
) -> Result<EventResult, DbError> {
    let commit = deploy.commit.as_ref().map(CommitSha::as_str).unwrap_or("");
    let time = deploy.time.seconds();
    // A deploy that names only its commit takes the newest image linked to it.
    let image_sha = match (deploy.image_sha, &deploy.commit) {
        (Some(image), _) => Some(image),
        (None, Some(commit)) => latest_link(tx, &deploy.app, commit)?,
        (None, None) => None,
    };
    let image = image_text(image_sha.as_ref());
    let context = match prepared {
        Some(Prepared::New(context)) => context,
        Some(Prepared::Duplicate) => return Ok(EventResult::Duplicate),
        None => {
            if !insert_deploy(tx, deploy, &image, delivery_id)? {
                return Ok(EventResult::Duplicate);
            }
            deploy_context(
                tx,
                &deploy.app,
                &deploy.namespace,
                &image,
                commit,
                time,
                link_window,
            )?
        }
    };
    let mut effects = vec![Effect::Deploy {
        app: deploy.app.clone(),
        namespace: deploy.namespace.clone(),
        image_sha,
        time,
    }];
    // Every commit built into this image (or named by the deploy) that has no
    // lead time yet gets one: this is its first deployment we know of.
    effects.extend(observe_lead_times(tx, &deploy.app, context.built, time)?);
    if let Some(commit) = &deploy.commit {
        effects.extend(observe_shipped(tx, &deploy.app, commit, time)?);
    }
    // This deploy is decided now; the one before it may have been tied to
    // failures that this one now stands between (it is the later deploy).
    effects.extend(apply_decisions(tx, &deploy.app, context.decisions)?);
    effects.extend(observe_recoveries(tx, &deploy.app, context.recoveries)?);
    Ok(EventResult::New(effects))
}

/// Inserts `deploy` against its identity; false when it was stored before.
fn insert_deploy(
    tx: &mut dyn Sql,
    deploy: &Deploy,
    image: &str,
    delivery_id: &str,
) -> Result<bool, DbError> {
    let app = deploy.app.as_str();
    let commit = deploy.commit.as_ref().map(CommitSha::as_str).unwrap_or("");
    let time = deploy.time.seconds();
    // The same deploy reported again, by this sender or another: same time,
    // and the same image or the same commit. (PostgreSQL holds this as two
    // unique indexes, which the insert meets, also when another replica
    // stores the same deploy at the same moment.)
    let seen = tx.dialect() != Dialect::Postgres
        && tx.exists(
        "SELECT 1 FROM deploys WHERE ?4 <> '' AND app = ?1 AND image_sha = ?4 AND namespace = ?2 AND time = ?3 \
         UNION ALL SELECT 1 FROM deploys INDEXED BY deploys_by_commit \
           WHERE ?5 <> '' AND app = ?1 AND commit_sha = ?5 AND commit_sha <> '' AND time = ?3 AND namespace = ?2 \
         LIMIT 1",
        &[&app, &deploy.namespace.as_str(), &time, &image, &commit],
    )?;
    if seen {
        return Ok(false);
    }
    let inserted = tx.execute(
        "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id, \
         rework_reported) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        &[
            &app,
            &deploy.namespace.as_str(),
            &time,
            &image,
            &commit,
            &environment(deploy),
            &delivery_id,
            &i64::from(deploy.rework),
        ],
    )?;
    Ok(inserted > 0)
}

/// PostgreSQL text cannot hold NUL; no environment name needs one.
pub(super) fn environment(deploy: &Deploy) -> String {
    deploy
        .environment
        .as_deref()
        .unwrap_or("")
        .replace('\0', "")
}

/// What a new deploy at `time` decides, read in one statement (one round
/// trip) rather than three: the commits [`observe_deployed`] reads, the
/// deploys whose decisions it can change, and the failures
/// [`observe_linked_recoveries`] reads from `time` to `time + link_window`.
/// None of the writes that follow changes what the others read (lead-time
/// observations, the deploys' decisions, recovery observations), so one
/// snapshot answers all three as three reads would.
///
/// The deploys decided again are the new one and, when a failure of the
/// application was created in the `link_window` after it, those at the
/// newest time before it within `link_window`: as [`redecide`] over the
/// whole window would find, reading only them. A new deploy changes no
/// other deploy's rework (that follows the failures alone), leaves the
/// deploys of its own second as they were (only a later deploy stands
/// between a deploy and a failure), and can only stand between a failure
/// created after it and the deploys just before it; older ones already
/// have those in between. Reading the whole window cost a scan of every
/// deploy of the application in the last `link_window`, per deploy.
#[derive(Default)]
pub(super) struct DeployContext {
    built: Vec<(String, i64)>,
    decisions: Vec<Decision>,
    recoveries: Vec<(String, i64)>,
}

impl DeployContext {
    /// Adds a row of [`context_sql`] whose columns begin at `first`.
    pub(super) fn add(&mut self, r: &Row<'_>, first: usize) -> Result<(), DbError> {
        match r.get::<i64>(first)? {
            0 => self.built.push((r.get(first + 1)?, r.get(first + 3)?)),
            1 => self.decisions.push(Decision::read(r, first + 1)?),
            _ => self.recoveries.push((r.get(first + 1)?, r.get(first + 3)?)),
        }
        Ok(())
    }
}

/// The read of one deploy's context. Parameters: ?1 app, ?2 image, ?3
/// commit, ?4 time, ?5 time − window, ?6 window, ?7 time + window, ?8
/// namespace.
pub(super) fn context_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    statement(&SQL, || {
        let decided = format!(
            "CAST(1 AS BIGINT), d.namespace, d.image_sha, d.time, d.rework, d.failed, {}, {}",
            rework_now(),
            failed_now("?6")
        );
        format!(
            "SELECT CAST(0 AS BIGINT), commit_sha, '', MIN(time), 0, 0, 1 = 0, 1 = 0 FROM ({BUILT}) AS built \
             GROUP BY commit_sha \
             UNION ALL SELECT {decided} FROM deploys AS d \
             WHERE d.app = ?1 AND d.image_sha = ?2 AND d.namespace = ?8 AND d.time = ?4 \
             UNION ALL SELECT {decided} FROM deploys AS d INDEXED BY deploys_by_app_time \
             WHERE d.app = ?1 AND d.time = (SELECT MAX(p.time) FROM deploys AS p INDEXED BY deploys_by_app_time \
                 WHERE p.app = ?1 AND p.time < ?4 AND p.time >= ?5) \
               AND EXISTS (SELECT 1 FROM failures AS f INDEXED BY failures_by_created \
                 WHERE f.app = ?1 AND f.created > ?4 AND f.created <= ?7) \
             UNION ALL SELECT CAST(2 AS BIGINT), f.issue_number, '', f.resolved - f.created, 0, 0, 1 = 0, 1 = 0 \
             FROM failures AS f INDEXED BY failures_by_created WHERE f.app = ?1 AND f.created > ?4 \
             AND f.created <= ?7 AND {}",
            linked_recovery("?6")
        )
    })
}

fn deploy_context(
    tx: &mut dyn Sql,
    app: &App,
    namespace: &Namespace,
    image: &str,
    commit: &str,
    time: i64,
    link_window: i64,
) -> Result<DeployContext, DbError> {
    let mut context = DeployContext::default();
    tx.each(
        context_sql(),
        &[
            &app.as_str(),
            &image,
            &commit,
            &time,
            &(time - link_window),
            &link_window,
            &(time + link_window),
            &namespace.as_str(),
        ],
        &mut |r| context.add(r, 0),
    )?;
    Ok(context)
}

/// A deploy that [`super::groups::prepare_deploys`] inserted ahead of its turn: whether
/// it was new and, if so, what it decides.
pub(super) enum Prepared {
    New(DeployContext),
    Duplicate,
}

/// The image most recently linked to `commit` of `app`, if any.
fn latest_link(
    tx: &mut dyn Sql,
    app: &App,
    commit: &CommitSha,
) -> Result<Option<ImageSha>, DbError> {
    let image: Option<String> = tx.row(
        "SELECT image_sha FROM links WHERE app = ?1 AND commit_sha = ?2 ORDER BY time DESC, image_sha LIMIT 1",
        &[&app.as_str(), &commit.as_str()],
        |r| r.get(0),
    )?;
    Ok(image.and_then(|i| ImageSha::parse(&i).ok()))
}

/// Records a commit→digest link and gives its image to the deploys of that
/// commit that were stored without one (unless the same deploy is already
/// stored with that image: then it keeps none, and counts once).
fn apply_link(tx: &mut dyn Sql, link: &Link, delivery_id: &str) -> Result<EventResult, DbError> {
    let app = link.app.as_str();
    let image = link.image_sha.to_string();
    let inserted = tx.execute(
        "INSERT INTO links (app, commit_sha, image_sha, time, delivery_id) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT DO NOTHING",
        &[
            &app,
            &link.commit.as_str(),
            &image,
            &link.time.seconds(),
            &delivery_id,
        ],
    )?;
    if inserted == 0 {
        return Ok(EventResult::Duplicate);
    }
    let resolved: Vec<(String, i64)> = tx.rows(
        "UPDATE deploys SET image_sha = ?3 WHERE app = ?1 AND commit_sha = ?2 AND commit_sha <> '' AND image_sha = '' \
         AND NOT EXISTS (SELECT 1 FROM deploys AS same WHERE same.app = deploys.app \
           AND same.image_sha = ?3 AND same.namespace = deploys.namespace AND same.time = deploys.time) \
         RETURNING namespace, time",
        &[&app, &link.commit.as_str(), &image],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut effects = Vec::new();
    for (namespace, time) in resolved {
        let Ok(namespace) = Namespace::parse(&namespace) else {
            continue;
        };
        effects.push(Effect::DeployImage {
            app: link.app.clone(),
            namespace,
            image_sha: link.image_sha,
            time,
        });
        effects.extend(observe_deployed(tx, &link.app, &image, "", time)?);
    }
    // The image may have been deployed before the link arrived (a deploy
    // naming only its digest): the commit was shipped by its first deploy.
    let deployed: Option<i64> = tx.value(
        "SELECT MIN(time) FROM deploys WHERE app = ?1 AND image_sha = ?2",
        &[&app, &image],
    )?;
    if let Some(deployed) = deployed {
        effects.extend(observe_deployed(
            tx,
            &link.app,
            "",
            link.commit.as_str(),
            deployed,
        )?);
    }
    Ok(EventResult::New(effects))
}

/// Keeps the newest created and resolved time of a failure. Its row is
/// made to exist first (a no-op when it does), then locked (PostgreSQL: two
/// replicas updating one failure at once take turns, the second sees the
/// first one's commit), then updated only when this change is newer.
fn apply_failure(
    tx: &mut dyn Sql,
    failure: &Failure,
    delivery_id: &str,
    link_window: i64,
) -> Result<EventResult, DbError> {
    let app = failure.app.as_str();
    let issue = failure.issue_number.as_str();
    let time = failure.time.seconds();
    tx.execute(
        "INSERT INTO failures (app, issue_number) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        &[&app, &issue],
    )?;
    type Ends = (Option<i64>, Option<String>, Option<i64>, Option<String>);
    let stored: Ends = tx
        .row(
            &format!(
                "SELECT created, created_delivery, resolved, resolved_delivery FROM failures \
                 WHERE app = ?1 AND issue_number = ?2{}",
                tx.dialect().for_update()
            ),
            &[&app, &issue],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
        .unwrap_or_default();
    let (created, created_by, resolved, resolved_by) = stored;
    let (current, current_by) = match failure.change {
        FailureChange::Created => (created, created_by),
        FailureChange::Resolved => (resolved, resolved_by),
    };
    match current {
        Some(existing) if existing == time => return Ok(EventResult::Duplicate),
        Some(existing) if existing > time => {
            return Ok(EventResult::Outdated {
                superseded_by: current_by.unwrap_or_default(),
            })
        }
        _ => {}
    }
    let first = current.is_none();
    tx.execute(
        match failure.change {
            FailureChange::Created => {
                "UPDATE failures SET created = ?3, created_delivery = ?4 WHERE app = ?1 AND issue_number = ?2"
            }
            FailureChange::Resolved => {
                "UPDATE failures SET resolved = ?3, resolved_delivery = ?4 WHERE app = ?1 AND issue_number = ?2"
            }
        },
        &[&app, &issue, &time, &delivery_id],
    )?;
    let (before_created, before_resolved) = (created, resolved);
    let (created, resolved) = match failure.change {
        FailureChange::Created => (Some(time), resolved),
        FailureChange::Resolved => (created, Some(time)),
    };
    let open_since = open_since(created, resolved);
    let mut effects = vec![match failure.change {
        FailureChange::Created => Effect::FailureCreated {
            app: failure.app.clone(),
            issue_number: failure.issue_number.clone(),
            time,
            first,
            open_since,
        },
        FailureChange::Resolved => Effect::FailureResolved {
            app: failure.app.clone(),
            issue_number: failure.issue_number.clone(),
            time,
            first,
            open_since,
        },
    }];
    if let (Some(created), Some(resolved)) = (created, resolved) {
        effects.extend(observe_once(
            tx,
            TIME_TO_RESTORE,
            &failure.app,
            issue,
            resolved - created,
        )?);
        effects.extend(observe_linked_recoveries(
            tx,
            &failure.app,
            created - 1,
            created,
            link_window,
        )?);
    }
    // The deploys whose decision this change can move: those inside the
    // failure's open span before or after it (rework), and those in the
    // link window before either creation time (failed).
    let spans = [(before_created, before_resolved), (created, resolved)];
    let mut from = i64::MAX;
    let mut to = i64::MIN;
    for (created, resolved) in spans {
        let Some(created) = created else { continue };
        from = from.min(created - link_window);
        to = to.max(match resolved {
            Some(resolved) if resolved >= created => resolved.max(created),
            _ => i64::MAX,
        });
    }
    if from <= to {
        effects.extend(redecide(tx, &failure.app, from, to, link_window)?);
    }
    Ok(EventResult::New(effects))
}
