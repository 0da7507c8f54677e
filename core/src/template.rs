//! Template rendering with minijinja: variables, defaults, conditionals, loops and filters
//! (dates among them, from minijinja-contrib). Undefined variables are errors, so a send that
//! misses one is refused at ingest, never failed later in the pipeline.
//!
//! Templates come from tenants: they are untrusted code, and every render is bounded.
//! - **Work**: minijinja's fuel, a budget of VM instructions (`templates.fuel`).
//! - **Output**: title, body and webhook body together at most `limits.max_body_bytes`.
//! - **Memory and time**: [`Renderer`] renders in worker processes (`tidings render-worker`),
//!   each under an address-space limit (`templates.memory_mb`) and killed past
//!   `templates.timeout_ms`; a template that grows one value past the limit (string
//!   repetition and concatenation are single instructions, so fuel alone does not bound
//!   memory) takes down only its worker. Renders never run on the async workers. The API and
//!   the router each have `templates.workers` of them; on the API's a tenant runs at most
//!   half at once (the rest wait, and are refused with `render_busy` past the time limit),
//!   so one tenant's template cannot stall the others, nor API traffic the router.
//!
//! Whatever passes a bound is `template_limit_exceeded` (422): at save (a trial render with
//! empty data), at preview and at send. The router renders exactly what ingest validated.

use crate::error::{Error, ErrorKind, Result};
use crate::model::{InappTemplate, Template};
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The bounds of one render.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// VM instructions one render may execute.
    pub fuel: u64,
    /// Bytes of output (every variant together) one render may produce.
    pub max_output: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            fuel: 200_000,
            max_output: 64 * 1024,
        }
    }
}

/// How undefined variables are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A send or a preview: undefined variables are errors.
    Strict,
    /// A trial at save time with empty data: only the bounds are checked.
    Trial,
}

fn env(mode: Mode, fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(match mode {
        Mode::Strict => UndefinedBehavior::Strict,
        Mode::Trial => UndefinedBehavior::Chainable,
    });
    env.set_fuel(Some(fuel));
    minijinja_contrib::add_to_environment(&mut env);
    env
}

fn limit_exceeded(message: impl Into<String>) -> Error {
    Error::invalid("template_limit_exceeded", message)
}

/// A parse-only environment for [`check`].
fn parser() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| env(Mode::Strict, Bounds::default().fuel))
}

/// The rendered variants of one template for one send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub title: String,
    pub body: String,
    /// The webhook JSON body, when the template has a webhook variant.
    pub webhook: Option<serde_json::Value>,
}

/// Check that every source of `template` parses (`template_invalid` otherwise).
pub fn check(template: &Template) -> Result<()> {
    let mut sources: Vec<(&str, &str)> = vec![
        ("inapp.title", &template.inapp.title),
        ("inapp.body", &template.inapp.body),
    ];
    if let Some(w) = &template.webhook {
        sources.push(("webhook", w));
    }
    for (locale, t) in &template.locales {
        sources.push((locale, &t.title));
        sources.push((locale, &t.body));
    }
    for (name, src) in sources {
        parser()
            .template_from_str(src)
            .map_err(|e| Error::invalid("template_invalid", format!("{name}: {e}")))?;
    }
    for v in &template.required {
        if v.is_empty() {
            return Err(Error::invalid(
                "template_invalid",
                "required: empty variable name",
            ));
        }
    }
    Ok(())
}

/// The output of one render, shared by its variants; refuses bytes past the bound.
struct Output {
    buf: Vec<u8>,
    left: usize,
    over: bool,
}

impl Write for &mut Output {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() > self.left {
            self.over = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.left -= b.len();
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders in this process with fuel and an output bound (no memory bound: see [`Renderer`]).
pub struct Engine {
    strict: Environment<'static>,
    trial: Environment<'static>,
    bounds: Bounds,
}

impl Engine {
    pub fn new(bounds: Bounds) -> Engine {
        Engine {
            strict: env(Mode::Strict, bounds.fuel),
            trial: env(Mode::Trial, bounds.fuel),
            bounds,
        }
    }

    fn render_one(
        &self,
        mode: Mode,
        name: &str,
        src: &str,
        data: &serde_json::Value,
        out: &mut Output,
    ) -> Result<String> {
        let env = match mode {
            Mode::Strict => &self.strict,
            Mode::Trial => &self.trial,
        };
        let tmpl = env
            .template_from_str(src)
            .map_err(|e| Error::invalid("template_invalid", format!("{name}: {e}")))?;
        let start = out.buf.len();
        match tmpl.render_captured_to(data, &mut *out) {
            Ok(_) => Ok(String::from_utf8_lossy(&out.buf[start..]).into_owned()),
            Err(_) if out.over => Err(limit_exceeded(format!(
                "{name}: the rendered output is over {} bytes",
                self.bounds.max_output
            ))),
            Err(e) => Err(match e.kind() {
                minijinja::ErrorKind::OutOfFuel => limit_exceeded(format!(
                    "{name}: rendering takes more than {} steps",
                    self.bounds.fuel
                )),
                minijinja::ErrorKind::UndefinedError => Error::invalid(
                    "template_variable_missing",
                    format!("{name}: a variable the template uses is missing: {e}"),
                ),
                _ => Error::invalid("template_render_failed", format!("{name}: {e}")),
            }),
        }
    }

    /// Render `template` with `data` for `locale` (falling back from `zh-CN` to `zh`, then to
    /// the default variant). In [`Mode::Trial`] only the bounds are checked.
    pub fn render(
        &self,
        template: &Template,
        data: &serde_json::Value,
        locale: Option<&str>,
        mode: Mode,
    ) -> Result<Rendered> {
        let result = self.render_inner(template, data, locale, mode);
        match (mode, result) {
            (Mode::Trial, Err(e)) if e.code != "template_limit_exceeded" => Ok(Rendered {
                title: String::new(),
                body: String::new(),
                webhook: None,
            }),
            (_, r) => r,
        }
    }

    fn render_inner(
        &self,
        template: &Template,
        data: &serde_json::Value,
        locale: Option<&str>,
        mode: Mode,
    ) -> Result<Rendered> {
        if !data.is_object() && !data.is_null() {
            return Err(Error::invalid(
                "invalid_request",
                "data: must be a JSON object",
            ));
        }
        if mode == Mode::Strict {
            for var in &template.required {
                if data.get(var).is_none_or(|v| v.is_null()) {
                    return Err(Error::invalid(
                        "template_variable_missing",
                        format!("data: required variable `{var}` is missing"),
                    ));
                }
            }
        }
        let mut out = Output {
            buf: Vec::new(),
            left: self.bounds.max_output,
            over: false,
        };
        let variants: Vec<&InappTemplate> = match mode {
            // a trial renders every locale: any of them may be chosen at send time
            Mode::Trial => std::iter::once(&template.inapp)
                .chain(template.locales.values())
                .collect(),
            Mode::Strict => vec![locale
                .and_then(|l| {
                    template.locales.get(l).or_else(|| {
                        template
                            .locales
                            .get(l.split(['-', '_']).next().unwrap_or(l))
                    })
                })
                .unwrap_or(&template.inapp)],
        };
        let (mut title, mut body) = (String::new(), String::new());
        for inapp in variants {
            out.buf.clear();
            out.left = self.bounds.max_output;
            title = self.render_one(mode, "inapp.title", &inapp.title, data, &mut out)?;
            body = self.render_one(mode, "inapp.body", &inapp.body, data, &mut out)?;
        }
        let webhook = match &template.webhook {
            Some(src) => {
                let text = self.render_one(mode, "webhook", src, data, &mut out)?;
                match mode {
                    Mode::Trial => None,
                    Mode::Strict => Some(serde_json::from_str(&text).map_err(|e| {
                        Error::invalid(
                            "template_render_failed",
                            format!("webhook: the rendered body is not JSON: {e}"),
                        )
                    })?),
                }
            }
            None => None,
        };
        Ok(Rendered {
            title,
            body,
            webhook,
        })
    }
}

/// Render in this process with the default bounds (tests and benchmarks; the server goes
/// through [`Renderer`]).
pub fn render(
    template: &Template,
    data: &serde_json::Value,
    locale: Option<&str>,
) -> Result<Rendered> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(Bounds::default()))
        .render(template, data, locale, Mode::Strict)
}

/// One render asked of a worker process: a line of JSON on its stdin.
#[derive(Serialize, Deserialize)]
struct Job {
    template: Template,
    data: serde_json::Value,
    locale: Option<String>,
    mode: Mode,
}

/// A worker's answer: a line of JSON on its stdout.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(Rendered),
    Error { code: String, message: String },
}

/// The codes a worker may answer with, back to their static form.
fn known_code(code: &str) -> &'static str {
    [
        "template_invalid",
        "template_variable_missing",
        "template_render_failed",
        "template_limit_exceeded",
        "invalid_request",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("template_render_failed")
}

/// The loop of `tidings render-worker`: one job per line on stdin, one answer per line on
/// stdout, until stdin closes. The caller sets the process's memory limit first.
pub fn worker_main(bounds: Bounds) -> std::io::Result<()> {
    let engine = Engine::new(bounds);
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line?;
        let answer = match serde_json::from_str::<Job>(&line) {
            Ok(job) => {
                match engine.render(&job.template, &job.data, job.locale.as_deref(), job.mode) {
                    Ok(r) => Answer::Ok(r),
                    Err(e) => Answer::Error {
                        code: e.code.to_string(),
                        message: e.message,
                    },
                }
            }
            Err(e) => Answer::Error {
                code: "template_render_failed".into(),
                message: format!("unreadable render job: {e}"),
            },
        };
        serde_json::to_writer(&mut stdout, &answer)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}

/// A running worker process.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

/// Where renders run.
enum Place {
    /// On the blocking pool of this process (fuel and output bounded, memory not).
    InProcess(Arc<Engine>),
    /// In worker processes started from `exe` (`<exe> render-worker ...`).
    Workers {
        exe: std::path::PathBuf,
        memory_mb: u64,
        idle: Mutex<Vec<Worker>>,
    },
}

/// Bounded rendering for the server: at most `concurrency` renders at once, each under the
/// time limit, off the async workers. See the module docs. The server keeps two: one for the
/// API (previews, saves, sends), where each tenant runs at most its share at once and a
/// render that cannot start within the time limit is refused (`render_busy`, 503), and one
/// for the router, so that API traffic never stalls routing.
pub struct Renderer {
    place: Place,
    bounds: Bounds,
    timeout: Duration,
    permits: Arc<tokio::sync::Semaphore>,
    /// Most renders of one tenant running at once (API renderer only); more wait in line.
    per_tenant: Option<usize>,
    busy: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// A tenant's turn among the renders in progress; its line is forgotten once empty.
struct TenantSlot<'a> {
    busy: &'a Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    tenant: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for TenantSlot<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        // every render holding or waiting for a turn holds the line's Arc: the map's is the
        // last one exactly when the line is empty
        if busy
            .get(&self.tenant)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            busy.remove(&self.tenant);
        }
    }
}

fn render_busy(m: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unavailable, "render_busy", m)
}

impl Renderer {
    /// Render on this process's blocking threads.
    pub fn in_process(bounds: Bounds, timeout: Duration, concurrency: usize) -> Renderer {
        Renderer {
            place: Place::InProcess(Arc::new(Engine::new(bounds))),
            bounds,
            timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            per_tenant: None,
            busy: Mutex::default(),
        }
    }

    /// Run at most `n` renders of a tenant at once (more wait in line), and refuse a render
    /// that cannot start within the time limit (`render_busy`).
    pub fn with_tenant_bound(mut self, n: usize) -> Renderer {
        self.per_tenant = Some(n.max(1));
        self
    }

    /// Render in up to `workers` processes of `exe render-worker`, each limited to
    /// `memory_mb` of address space.
    pub fn sandboxed(
        exe: std::path::PathBuf,
        bounds: Bounds,
        timeout: Duration,
        workers: usize,
        memory_mb: u64,
    ) -> Renderer {
        Renderer {
            place: Place::Workers {
                exe,
                memory_mb,
                idle: Mutex::new(Vec::new()),
            },
            bounds,
            timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
            per_tenant: None,
            busy: Mutex::default(),
        }
    }

    /// Render `template` for `tenant`; see [`Engine::render`].
    pub async fn render(
        &self,
        tenant: &str,
        template: &Template,
        data: &serde_json::Value,
        locale: Option<&str>,
        mode: Mode,
    ) -> Result<Rendered> {
        let start = tokio::time::Instant::now();
        let _slot = match self.per_tenant {
            None => None,
            Some(share) => {
                let line = self
                    .busy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(tenant.to_string())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(share)))
                    .clone();
                let mut slot = TenantSlot {
                    busy: &self.busy,
                    tenant: tenant.to_string(),
                    permit: None,
                };
                // the line's Arc moves into the permit: once given back, the map holds the
                // only reference and an idle line can be forgotten
                let permit = tokio::time::timeout(self.timeout, line.acquire_owned())
                    .await
                    .map_err(|_| {
                        render_busy(format!(
                            "this tenant's renders are queued past {} ms; try again",
                            self.timeout.as_millis()
                        ))
                    })?
                    .map_err(|_| Error::unavailable("the renderer is shut down"))?;
                slot.permit = Some(permit);
                Some(slot)
            }
        };
        let left = self.timeout.saturating_sub(start.elapsed());
        let acquire = self.permits.clone().acquire_owned();
        let permit = match self.per_tenant {
            // the API: a render that cannot start in time is refused
            Some(_) => tokio::time::timeout(left, acquire)
                .await
                .map_err(|_| render_busy("every template renderer is busy; try again"))?,
            // the router: wait for a turn
            None => acquire.await,
        }
        .map_err(|_| Error::unavailable("the renderer is shut down"))?;
        match &self.place {
            Place::InProcess(engine) => {
                let (engine, template, data) = (engine.clone(), template.clone(), data.clone());
                let locale = locale.map(str::to_string);
                // the permit stays with the work: a render past the time limit still counts
                // until it ends (fuel bounds it)
                let job = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    engine.render(&template, &data, locale.as_deref(), mode)
                });
                match tokio::time::timeout(self.timeout, job).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => Err(Error::internal(format!("a render panicked: {e}"))),
                    Err(_) => Err(self.too_slow()),
                }
            }
            Place::Workers {
                exe,
                memory_mb,
                idle,
            } => {
                let job = Job {
                    template: template.clone(),
                    data: data.clone(),
                    locale: locale.map(str::to_string),
                    mode,
                };
                let mut line = serde_json::to_vec(&job)
                    .map_err(|e| Error::internal(format!("encoding a render job: {e}")))?;
                line.push(b'\n');
                let _permit = permit;
                let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let mut worker = match pooled {
                    Some(w) => w,
                    None => self.spawn(exe, *memory_mb)?,
                };
                match tokio::time::timeout(self.timeout, exchange(&mut worker, &line)).await {
                    Ok(Ok(answer)) => {
                        idle.lock().unwrap_or_else(|p| p.into_inner()).push(worker);
                        match serde_json::from_str::<Answer>(&answer) {
                            Ok(Answer::Ok(r)) => Ok(r),
                            Ok(Answer::Error { code, message }) => {
                                Err(Error::new(ErrorKind::Invalid, known_code(&code), message))
                            }
                            Err(e) => {
                                Err(Error::internal(format!("unreadable render answer: {e}")))
                            }
                        }
                    }
                    Ok(Err(_)) => {
                        // the worker died in the middle of the job: an abort is an allocation
                        // over its memory limit, anything else is not the template's fault
                        let status = worker.child.wait().await.ok();
                        if status.is_some_and(aborted) {
                            Err(limit_exceeded(format!(
                                "rendering needs more than {memory_mb} MiB of memory"
                            )))
                        } else {
                            Err(Error::unavailable(format!(
                                "a render worker stopped: {status:?}"
                            )))
                        }
                    }
                    Err(_) => {
                        let _ = worker.child.start_kill();
                        Err(self.too_slow())
                    }
                }
            }
        }
    }

    fn too_slow(&self) -> Error {
        limit_exceeded(format!(
            "rendering takes longer than {} ms",
            self.timeout.as_millis()
        ))
    }

    fn spawn(&self, exe: &std::path::Path, memory_mb: u64) -> Result<Worker> {
        let mut child = tokio::process::Command::new(exe)
            .arg("render-worker")
            .arg(format!("--fuel={}", self.bounds.fuel))
            .arg(format!("--max-output={}", self.bounds.max_output))
            .arg(format!("--memory-mb={memory_mb}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::unavailable(format!("cannot start a render worker: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::internal("a render worker without pipes"));
        };
        Ok(Worker {
            child,
            stdin,
            stdout: tokio::io::BufReader::new(stdout),
        })
    }
}

/// Send one job line, read one answer line.
async fn exchange(w: &mut Worker, line: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    w.stdin.write_all(line).await?;
    w.stdin.flush().await?;
    let mut answer = String::new();
    if w.stdout.read_line(&mut answer).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(answer)
}

#[cfg(unix)]
fn aborted(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    // SIGABRT: Rust's answer to a failed allocation
    status.signal() == Some(6)
}

#[cfg(not(unix))]
fn aborted(_: std::process::ExitStatus) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tpl(title: &str, body: &str) -> Template {
        Template {
            inapp: InappTemplate {
                title: title.into(),
                body: body.into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn variables_defaults_conditionals_loops_filters() {
        let t = tpl(
            "Order {{ order }} {{ status | default('shipped') }}",
            "{% if vip %}Dear VIP, {% endif %}{% for i in items %}{{ i | upper }};{% endfor %} on {{ at | dateformat(format='[year]-[month]-[day]') }}",
        );
        let r = render(
            &t,
            &json!({"order": "A-17", "vip": true, "items": ["a", "b"], "at": 1763900000}),
            None,
        )
        .unwrap();
        assert_eq!(r.title, "Order A-17 shipped");
        assert_eq!(r.body, "Dear VIP, A;B; on 2025-11-23");
    }

    #[test]
    fn missing_variable_is_a_stable_error() {
        let t = tpl("{{ order }}", "x");
        assert_eq!(
            render(&t, &json!({}), None).unwrap_err().code,
            "template_variable_missing"
        );
        let mut t = tpl("x", "y");
        t.required = vec!["order".into()];
        assert_eq!(
            render(&t, &json!({}), None).unwrap_err().code,
            "template_variable_missing"
        );
    }

    #[test]
    fn unparsable_template_is_refused() {
        assert_eq!(
            check(&tpl("{{ order", "x")).unwrap_err().code,
            "template_invalid"
        );
        assert_eq!(
            check(&tpl("{% if %}", "x")).unwrap_err().code,
            "template_invalid"
        );
    }

    #[test]
    fn locale_and_webhook_variants() {
        let mut t = tpl("Shipped {{ order }}", "b");
        t.locales.insert(
            "zh".into(),
            InappTemplate {
                title: "已发货 {{ order }}".into(),
                body: "b".into(),
            },
        );
        t.webhook = Some(r#"{"order": {{ order | tojson }}, "n": {{ n }}}"#.into());
        let r = render(&t, &json!({"order": "A\"1", "n": 3}), Some("zh-CN")).unwrap();
        assert_eq!(r.title, "已发货 A\"1");
        assert_eq!(r.webhook.unwrap(), json!({"order": "A\"1", "n": 3}));
    }

    fn limit(r: Result<Rendered>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, "template_limit_exceeded", "{e}");
        e.message
    }

    #[test]
    fn output_is_bounded() {
        // the probe's 70-byte template rendered 1 GB
        let t = tpl(
            "x",
            "{% for i in range(10) %}{{ 'x'*100000000 }}{% endfor %}",
        );
        let m = limit(render(&t, &json!({}), None));
        assert!(m.contains("over 65536 bytes"), "{m}");
        // the same bound holds for many small writes, and across title and body
        let e = Engine::new(Bounds {
            fuel: 1_000_000,
            max_output: 1000,
        });
        let t = tpl("{{ 'a' * 600 }}", "{{ 'b' * 600 }}");
        limit(e.render(&t, &json!({}), None, Mode::Strict));
        let t = tpl("{% for i in range(2000) %}y{% endfor %}", "");
        limit(e.render(&t, &json!({}), None, Mode::Strict));
    }

    #[test]
    fn work_is_bounded_by_fuel() {
        let t = tpl(
            "x",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        let started = std::time::Instant::now();
        let m = limit(render(&t, &json!({}), None));
        assert!(m.contains("steps"), "{m}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_trial_checks_bounds_without_data() {
        let e = Engine::new(Bounds::default());
        // needs data it does not have: fine at save time
        let t = tpl("{{ order.id }}", "{{ items | length }}");
        e.render(&t, &json!({}), None, Mode::Trial).unwrap();
        // over a bound whatever the data: refused at save time, in every locale
        let mut t = tpl("x", "y");
        t.locales.insert(
            "de".into(),
            InappTemplate {
                title: "{% for i in range(10) %}{{ 'x'*100000 }}{% endfor %}".into(),
                body: String::new(),
            },
        );
        limit(e.render(&t, &json!({}), None, Mode::Trial));
    }

    #[tokio::test]
    async fn the_renderer_bounds_time_and_concurrency() {
        let r = Renderer::in_process(Bounds::default(), std::time::Duration::from_secs(5), 1);
        let ok = r
            .render(
                "t",
                &tpl("Hi {{ n }}", "b"),
                &json!({"n": 1}),
                None,
                Mode::Strict,
            )
            .await
            .unwrap();
        assert_eq!(ok.title, "Hi 1");
        let slow = tpl(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
        );
        limit(r.render("t", &slow, &json!({}), None, Mode::Strict).await);
    }

    #[tokio::test]
    async fn a_tenant_holds_only_its_share_of_the_api_renderer() {
        let r = Renderer::in_process(Bounds::default(), std::time::Duration::from_millis(300), 2)
            .with_tenant_bound(1);
        let t = tpl("hi {{ n }}", "");
        // tenant a's one render at a time is taken (held here)
        let line = Arc::new(tokio::sync::Semaphore::new(1));
        r.busy.lock().unwrap().insert("a".into(), line.clone());
        let held = line.clone().acquire_owned().await.unwrap();
        // its next render waits in line, then is refused past the time limit
        let e = r
            .render("a", &t, &json!({"n": 1}), None, Mode::Strict)
            .await
            .unwrap_err();
        assert_eq!(e.code, "render_busy");
        assert!(e.is_retriable());
        // others are not held up, and their lines are forgotten when empty
        let ok = r
            .render("b", &t, &json!({"n": 2}), None, Mode::Strict)
            .await
            .unwrap();
        assert_eq!(ok.title, "hi 2");
        assert!(!r.busy.lock().unwrap().contains_key("b"));
        // once a's turn is free, its renders run, one at a time
        drop(held);
        r.busy.lock().unwrap().clear();
        drop(line);
        let data = json!({"n": 0});
        let (x, y, z) = tokio::join!(
            r.render("a", &t, &data, None, Mode::Strict),
            r.render("a", &t, &data, None, Mode::Strict),
            r.render("a", &t, &data, None, Mode::Strict)
        );
        assert!(
            x.is_ok() && y.is_ok() && z.is_ok(),
            "queued renders of one tenant all run"
        );
        // the router's renderer has no tenant bound
        let router = Renderer::in_process(Bounds::default(), std::time::Duration::from_secs(5), 1);
        router
            .render("a", &t, &json!({"n": 3}), None, Mode::Strict)
            .await
            .unwrap();
    }
}
