//! The OpenAPI document: what the annotations of the handlers give, made to
//! say exactly what the service does. Every answer an operation can give is
//! listed (problem documents as `application/problem+json`, with their
//! headers), and every request rule the parsers enforce is stated, from the
//! parsers' own constants, so a client generated from the document refuses
//! what the service would and nothing more.

use serde_json::{Value, json};
use utoipa::{
    Modify,
    openapi::{
        OpenApi, RefOr, Schema,
        path::{Operation, Parameter},
        schema::{ArrayItems, KnownFormat, SchemaFormat},
        security::{Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme},
    },
};

use super::{admin::CURSOR_PATTERN, extract::shown_name_pattern};
use crate::domain::{self, Email, Role, Roles, Username};

type Schemas = std::collections::BTreeMap<String, RefOr<Schema>>;

pub(super) struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // Registered OAuth clients: id and secret (`client_secret_basic`).
        components.add_security_scheme(
            "client",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        // Lets Swagger UI's Authorize button log in through the token endpoint.
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/auth/token",
                Scopes::new(),
            ))])),
        );
    }
}

/// The OpenAPI document of the whole API.
pub fn openapi() -> OpenApi {
    let mut spec = super::api_router().into_openapi();
    complete(&mut spec);
    spec
}

/// Completes the document the routes' annotations give.
pub(super) fn complete(spec: &mut OpenApi) {
    document_errors(spec);
    state_request_rules(spec);
    // A token pair has every field of a step-up's answer too: the two are
    // alternatives a body may match both of (`anyOf`), not exclusive ones.
    let schemas = &mut spec.components.get_or_insert_with(Default::default).schemas;
    if let Some(RefOr::T(Schema::OneOf(one_of))) = schemas.get("VerifyAnswer").cloned() {
        let mut any_of = utoipa::openapi::schema::AnyOf::new();
        any_of.items = one_of.items;
        any_of.description = one_of.description;
        schemas.insert("VerifyAnswer".into(), RefOr::T(Schema::AnyOf(any_of)));
    }
}

/// Makes the document say what every operation really answers: problem
/// documents as `application/problem+json`, and, for every JSON body, the
/// answers to a malformed one (400, 413, 415, 422).
fn document_errors(spec: &mut OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    const PROBLEM: &str = "#/components/schemas/Problem";
    let problem = |why: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(why)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::new(PROBLEM)))
                        .build(),
                )
                .build(),
        )
    };
    for op in operations(spec) {
        let json_body = matches!(&op.request_body,
                Some(RefOr::T(body)) if body.content.contains_key("application/json"));
        let form_body = matches!(&op.request_body,
                Some(RefOr::T(body)) if body.content.contains_key("application/x-www-form-urlencoded"));
        if form_body || json_body {
            for (status, why) in [
                ("408", "The body was not whole within the body read timeout"),
                ("413", "The body is larger than 64 KiB"),
            ] {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(why));
            }
        }
        // Any route: too many connections, the database or the
        // throttling store out of reach, or the request deadline.
        op.responses.responses.entry("503".to_owned()).or_insert_with(|| {
                problem("Unavailable for now (too many connections, or a store out of reach); retry after Retry-After")
            });
        if json_body {
            for (status, why) in [
                ("400", "The body is not JSON"),
                ("415", "The body is not application/json"),
                ("422", "A field is missing or invalid"),
            ] {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(why));
            }
        }
        for (status, response) in op.responses.responses.iter_mut() {
            let RefOr::T(response) = response else {
                continue;
            };
            for (name, kind, why) in answer_headers(status) {
                response.headers.entry(name.to_owned()).or_insert_with(|| {
                    let mut header = utoipa::openapi::header::Header::new(
                        utoipa::openapi::Object::with_type(kind),
                    );
                    header.description = Some(why.to_owned());
                    RefOr::T(header)
                });
            }
            let is_problem = matches!(response.content.get("application/json"),
                    Some(RefOr::T(c)) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == PROBLEM));
            if is_problem && let Some(content) = response.content.shift_remove("application/json") {
                response
                    .content
                    .insert("application/problem+json".to_owned(), content);
            }
        }
    }
}

/// The headers an answer of `status` carries, as the document states them.
fn answer_headers(status: &str) -> Vec<(&'static str, utoipa::openapi::Type, &'static str)> {
    use utoipa::openapi::Type;
    let retry = (
        "Retry-After",
        Type::Integer,
        "Seconds to wait before retrying",
    );
    match status {
        "401" => vec![(
            "WWW-Authenticate",
            Type::String,
            "The Bearer challenge (RFC 6750)",
        )],
        "429" => vec![
            retry,
            (
                "RateLimit-Policy",
                Type::String,
                "The limit that refused the request (IETF draft httpapi-ratelimit-headers), e.g. `\"signup\";q=20;w=60`",
            ),
            (
                "RateLimit",
                Type::String,
                "The limit's state: `\"signup\";r=0;t=12`",
            ),
        ],
        "503" => vec![retry],
        _ => Vec::new(),
    }
}

/// Every operation of the document.
fn operations(spec: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    spec.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

/// A rule of one string field.
struct Rule {
    pattern: Option<&'static str>,
    format: Option<KnownFormat>,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

const USERNAME: Rule = Rule {
    pattern: Some(Username::PATTERN),
    format: None,
    min_length: None,
    max_length: None,
};
/// The `email` format adds what a pattern cannot state: a local part of at
/// most 64 characters, and valid IDNA in `xn--` labels.
const EMAIL: Rule = Rule {
    pattern: Some(Email::PATTERN),
    format: Some(KnownFormat::Email),
    min_length: None,
    max_length: Some(Email::MAX_LEN),
};
/// A new password. That it is not a common one, nor the account's own
/// name, no schema can say; the descriptions do.
const NEW_PASSWORD: Rule = Rule {
    pattern: None,
    format: None,
    min_length: Some(domain::Password::MIN_CHARS),
    max_length: Some(domain::Password::MAX_CHARS),
};
const PRESENT: Rule = Rule {
    pattern: None,
    format: None,
    min_length: Some(1),
    max_length: None,
};

/// Binary in a WebAuthn answer: unpadded base64url whose last character
/// carries no stray bits (what a browser's `toJSON()` writes, and all the
/// decoder takes).
const BASE64URL: Rule = Rule {
    pattern: Some(
        "^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-][AQgw]|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048])?$",
    ),
    format: None,
    min_length: None,
    max_length: None,
};
/// An id the service gave (a ceremony's `challenge_id`), as it writes them.
const UUID: Rule = Rule {
    pattern: Some("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
    format: Some(KnownFormat::Uuid),
    min_length: None,
    max_length: None,
};

/// States in the document the rules the request parsers enforce, from the
/// parsers' own constants.
fn state_request_rules(spec: &mut OpenApi) {
    let schemas = &mut spec.components.get_or_insert_with(Default::default).schemas;
    for schema in ["SignupRequest", "CreateUserRequest", "UpdateProfileRequest"] {
        string_rule(schemas, schema, "username", &USERNAME);
        string_rule(schemas, schema, "email", &EMAIL);
    }
    string_rule(schemas, "ForgotPasswordRequest", "email", &EMAIL);
    string_rule(schemas, "SignupRequest", "password", &NEW_PASSWORD);
    string_rule(schemas, "CreateUserRequest", "password", &NEW_PASSWORD);
    string_rule(
        schemas,
        "ChangePasswordRequest",
        "new_password",
        &NEW_PASSWORD,
    );
    string_rule(
        schemas,
        "ResetPasswordRequest",
        "new_password",
        &NEW_PASSWORD,
    );
    // RFC 7009 §2.1 and RFC 7662 §2.1: `token` is required.
    string_rule(schemas, "TokenQueryForm", "token", &PRESENT);
    object(schemas, "TokenQueryForm").required = vec!["token".into()];
    let grant_type = field(schemas, "TokenForm", "grant_type");
    grant_type.enum_values = Some(vec![json!("password"), json!("refresh_token")]);
    object(schemas, "TokenForm").required = vec!["grant_type".into()];
    for schema in ["CreateUserRequest", "UpdateUserRequest"] {
        let Some(RefOr::T(Schema::Array(roles))) =
            object(schemas, schema).properties.get_mut("roles")
        else {
            panic!("the API document has no list {schema}.roles");
        };
        roles.max_items = Some(Roles::MAX);
        if let ArrayItems::RefOrSchema(item) = &mut roles.items
            && let RefOr::T(Schema::Object(item)) = item.as_mut()
        {
            item.pattern = Some(Role::PATTERN.to_owned());
        }
    }
    // At least one of the two names (a null is no name).
    let named = |fields: &[&str]| {
        let types: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| ((*f).to_owned(), json!({"type": "string"})))
            .collect();
        json!({"required": fields, "properties": types})
    };
    for schema in ["SignupRequest", "LoginRequest"] {
        let branches = vec![named(&["username"]), named(&["email"])];
        combine(schemas, schema, "anyOf", branches);
    }
    // Names shown to people.
    for schema in ["EnrollRequest", "RegistrationFinish"] {
        field(schemas, schema, "name").pattern = Some(shown_name_pattern());
    }
    // WebAuthn's answers, as the library reads them.
    for (schema, fields) in [
        ("RegistrationResponseJSON", &["rawId"][..]),
        ("AuthenticationResponseJSON", &["rawId"][..]),
        (
            "AuthenticatorAttestationResponseJSON",
            &["clientDataJSON", "attestationObject"][..],
        ),
        (
            "AuthenticatorAssertionResponseJSON",
            &[
                "clientDataJSON",
                "authenticatorData",
                "signature",
                "userHandle",
            ][..],
        ),
    ] {
        for name in fields {
            string_rule(schemas, schema, name, &BASE64URL);
        }
    }
    for schema in ["RegistrationFinish", "PasskeyLoginFinish", "VerifyRequest"] {
        string_rule(schemas, schema, "challenge_id", &UUID);
    }
    // Exactly one proof: a code, a recovery code, or a passkey's answer
    // with its challenge (a null is none).
    let proof = |given: &[&str], absent: &[&str]| {
        let mut branch = named(given);
        for field in absent {
            branch["properties"][*field] = json!({"type": "null"});
        }
        branch
    };
    combine(
        schemas,
        "VerifyRequest",
        "oneOf",
        vec![
            proof(&["code"], &["recovery_code", "credential"]),
            proof(&["recovery_code"], &["code", "credential"]),
            {
                let mut passkey = proof(&["challenge_id"], &["code", "recovery_code"]);
                passkey["required"] = json!(["challenge_id", "credential"]);
                passkey["properties"]["credential"] = json!({"type": "object"});
                passkey
            },
        ],
    );
    // Without a password, the account's email is mailed a link to choose one.
    combine(
        schemas,
        "CreateUserRequest",
        "anyOf",
        vec![named(&["email"]), named(&["username", "password"])],
    );
    for op in operations(spec) {
        for param in op.parameters.iter_mut().flatten() {
            if let RefOr::T(param) = param {
                query_rule(param);
            }
        }
    }
}

/// The rules of query parameters that share a name across listings (an
/// empty value counts as absent).
fn query_rule(param: &mut Parameter) {
    let optional = |pattern: &str| {
        format!(
            "^({})?$",
            pattern.trim_start_matches('^').trim_end_matches('$')
        )
    };
    let (pattern, max_length) = match param.name.as_str() {
        "cursor" => (optional(CURSOR_PATTERN), None),
        "role" => (optional(Role::PATTERN), None),
        // The start of a name: no control characters.
        "q" => (
            "^[^\\u0000-\\u001F\\u007F-\\u009F]*$".to_owned(),
            Some(Email::MAX_LEN),
        ),
        _ => return,
    };
    if let Some(RefOr::T(Schema::Object(schema))) = param.schema.as_mut() {
        schema.pattern = Some(pattern);
        schema.max_length = max_length;
    }
}

fn object<'a>(schemas: &'a mut Schemas, name: &str) -> &'a mut utoipa::openapi::schema::Object {
    match schemas.get_mut(name) {
        Some(RefOr::T(Schema::Object(o))) => o,
        _ => panic!("the API document has no object schema {name}"),
    }
}

fn field<'a>(
    schemas: &'a mut Schemas,
    name: &str,
    field: &str,
) -> &'a mut utoipa::openapi::schema::Object {
    match object(schemas, name).properties.get_mut(field) {
        Some(RefOr::T(Schema::Object(o))) => o,
        _ => panic!("the API document has no field {name}.{field}"),
    }
}

fn string_rule(schemas: &mut Schemas, name: &str, field_name: &str, rule: &Rule) {
    let property = field(schemas, name, field_name);
    property.pattern = rule.pattern.map(str::to_owned);
    property.format = rule.format.clone().map(SchemaFormat::KnownFormat);
    property.min_length = rule.min_length;
    property.max_length = rule.max_length;
}

/// `keyword` (`anyOf`, `oneOf`) beside the object's own keywords (JSON
/// Schema 2020-12, which OpenAPI 3.1 uses, allows it; utoipa's object has
/// no field for it).
fn combine(schemas: &mut Schemas, name: &str, keyword: &str, branches: Vec<Value>) {
    object(schemas, name)
        .extensions
        .get_or_insert_with(Default::default)
        .insert(keyword.to_owned(), Value::Array(branches));
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(super::openapi()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                ops.push((format!("{} {path}", method.to_uppercase()), op));
            }
        }
        ops
    }

    #[test]
    fn every_bearer_route_also_accepts_the_oauth2_password_flow() {
        let doc = document();
        for (name, op) in operations(&doc) {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|req| req.as_object())
                .flat_map(|req| req.keys().map(String::as_str))
                .collect();
            if schemes.contains(&"bearer") {
                assert!(schemes.contains(&"oauth2"), "{name}: {schemes:?}");
            }
        }
    }

    #[test]
    fn every_operation_id_is_unique() {
        let doc = document();
        let mut seen = std::collections::HashSet::new();
        for (name, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(seen.insert(id.clone()), "{name}: operationId {id} is taken");
        }
    }

    #[test]
    fn every_error_answer_is_a_problem_document_or_an_oauth_error() {
        let doc = document();
        for (name, op) in operations(&doc) {
            for (status, answer) in op["responses"].as_object().unwrap() {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                let content = answer["content"].as_object().unwrap();
                assert!(
                    content.contains_key("application/problem+json")
                        || content.contains_key("application/json"),
                    "{name} {status}: {content:?}"
                );
            }
        }
    }

    #[test]
    fn request_rules_come_from_the_parsers() {
        let doc = document();
        let signup = &doc["components"]["schemas"]["SignupRequest"];
        assert_eq!(
            signup["properties"]["username"]["pattern"],
            crate::domain::Username::PATTERN
        );
        assert_eq!(signup["properties"]["email"]["format"], "email");
        assert_eq!(signup["properties"]["password"]["minLength"], 8);
        assert_eq!(signup["properties"]["password"]["maxLength"], 1024);
        assert_eq!(signup["anyOf"].as_array().unwrap().len(), 2);
        let answer = &doc["components"]["schemas"]["VerifyAnswer"]["anyOf"];
        assert_eq!(answer.as_array().map(Vec::len), Some(2), "{answer}");
        let grant = &doc["components"]["schemas"]["TokenForm"]["properties"]["grant_type"];
        assert_eq!(
            grant["enum"],
            serde_json::json!(["password", "refresh_token"])
        );
    }
}
