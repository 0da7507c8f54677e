//! Template rendering with minijinja: variables, defaults, conditionals, loops and filters
//! (dates among them, from minijinja-contrib). Undefined variables are errors, so a send that
//! misses one is refused at ingest, never failed later in the pipeline.

use crate::error::{Error, Result};
use crate::model::{InappTemplate, Template};
use minijinja::{Environment, UndefinedBehavior};
use std::sync::OnceLock;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        minijinja_contrib::add_to_environment(&mut env);
        env
    })
}

/// The rendered variants of one template for one send.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
        env()
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

fn render_one(name: &str, src: &str, data: &serde_json::Value) -> Result<String> {
    let tmpl = env()
        .template_from_str(src)
        .map_err(|e| Error::invalid("template_invalid", format!("{name}: {e}")))?;
    tmpl.render(data).map_err(|e| match e.kind() {
        minijinja::ErrorKind::UndefinedError => Error::invalid(
            "template_variable_missing",
            format!("{name}: a variable the template uses is missing: {e}"),
        ),
        _ => Error::invalid("template_render_failed", format!("{name}: {e}")),
    })
}

/// Render `template` with `data` for `locale` (falling back from `zh-CN` to `zh`, then to the
/// default variant).
pub fn render(
    template: &Template,
    data: &serde_json::Value,
    locale: Option<&str>,
) -> Result<Rendered> {
    if !data.is_object() && !data.is_null() {
        return Err(Error::invalid(
            "invalid_request",
            "data: must be a JSON object",
        ));
    }
    for var in &template.required {
        if data.get(var).is_none_or(|v| v.is_null()) {
            return Err(Error::invalid(
                "template_variable_missing",
                format!("data: required variable `{var}` is missing"),
            ));
        }
    }
    let inapp: &InappTemplate = locale
        .and_then(|l| {
            template.locales.get(l).or_else(|| {
                template
                    .locales
                    .get(l.split(['-', '_']).next().unwrap_or(l))
            })
        })
        .unwrap_or(&template.inapp);
    let title = render_one("inapp.title", &inapp.title, data)?;
    let body = render_one("inapp.body", &inapp.body, data)?;
    let webhook = match &template.webhook {
        Some(src) => {
            let text = render_one("webhook", src, data)?;
            Some(serde_json::from_str(&text).map_err(|e| {
                Error::invalid(
                    "template_render_failed",
                    format!("webhook: the rendered body is not JSON: {e}"),
                )
            })?)
        }
        None => None,
    };
    Ok(Rendered {
        title,
        body,
        webhook,
    })
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
}
