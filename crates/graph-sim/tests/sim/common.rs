use std::collections::{BTreeMap, BTreeSet};

use graph_sim::{AdminClient, NewGroup, NewUser, PagingConfig, RunningSim, SimConfig, UserFields};
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use uuid::Uuid;

pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

pub struct Sim {
    pub sim: RunningSim,
    pub admin: AdminClient,
    pub http: reqwest::Client,
    pub config: SimConfig,
    pub token: String,
}

pub fn paging(min: usize, max: usize, slice: usize, empty_every: Option<u32>) -> PagingConfig {
    PagingConfig {
        max_objects_per_page: max,
        min_objects_per_page: min,
        member_slice: slice,
        empty_page_every: empty_every,
        shuffle: true,
        page_delay_ms: 0,
    }
}

pub async fn sim_with(page: PagingConfig) -> Sim {
    let config = SimConfig { page, ..SimConfig::default() };
    let sim = graph_sim::start(config.clone()).await.unwrap();
    // The admin client installs the rustls crypto provider the test client needs too.
    let admin = sim.admin().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut s = Sim { sim, admin, http, config, token: String::new() };
    s.token = s.fetch_token().await;
    s
}

pub async fn sim() -> Sim {
    sim_with(PagingConfig::default()).await
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish()
}

/// Everything one delta round returned.
pub struct Round {
    pub pages: Vec<Value>,
    pub delta_link: String,
}

impl Round {
    pub fn objects(&self) -> Vec<Value> {
        self.pages.iter().flat_map(|p| p["value"].as_array().cloned().unwrap_or_default()).collect()
    }

    /// Objects merged by id, as a client must merge them.
    pub fn merged(&self) -> BTreeMap<String, Merged> {
        let mut out: BTreeMap<String, Merged> = BTreeMap::new();
        for o in self.objects() {
            let id = o["id"].as_str().unwrap().to_owned();
            let m = out.entry(id).or_default();
            m.occurrences += 1;
            if let Some(r) = o.get("@removed") {
                m.removed = Some(r["reason"].as_str().unwrap().to_owned());
            }
            for (k, v) in o.as_object().unwrap() {
                if k != "members@delta" && k != "@removed" {
                    m.props.insert(k.clone(), v.clone());
                }
            }
            for link in o.get("members@delta").and_then(Value::as_array).into_iter().flatten() {
                let id = link["id"].as_str().unwrap().to_owned();
                assert!(link["@odata.type"].as_str().unwrap().starts_with("#microsoft.graph."));
                if link.get("@removed").is_some() {
                    assert_eq!(link["@removed"]["reason"], "deleted");
                    m.removed_members.insert(id);
                } else {
                    m.added_members.insert(id);
                }
            }
        }
        out
    }
}

#[derive(Default, Debug)]
pub struct Merged {
    pub occurrences: usize,
    pub props: BTreeMap<String, Value>,
    pub added_members: BTreeSet<String>,
    pub removed_members: BTreeSet<String>,
    pub removed: Option<String>,
}

impl Sim {
    pub fn base(&self) -> &str {
        self.sim.base_url()
    }

    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.base(), self.config.tenant_id)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base())
    }

    pub async fn post_token(&self, body: String) -> reqwest::Response {
        self.http
            .post(self.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn fetch_token(&self) -> String {
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.config.client_id),
            ("client_secret", &self.config.client_secret),
            ("scope", GRAPH_SCOPE),
        ]);
        let resp = self.post_token(body).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.get_with(url, &[]).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(url).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// Follows nextLinks from `url` to the deltaLink, checking the page invariants.
    pub async fn round_with(&self, url: &str, headers: &[(&str, &str)]) -> Round {
        let mut pages = Vec::new();
        let mut next = url.to_owned();
        loop {
            let resp = self.get_with(&next, headers).await;
            assert_eq!(resp.status(), 200, "GET {next}");
            let page: Value = resp.json().await.unwrap();
            assert!(page["@odata.context"].as_str().unwrap().contains("/$metadata#"));
            assert!(page["value"].is_array());
            let (n, d) = (page.get("@odata.nextLink"), page.get("@odata.deltaLink"));
            assert!(n.is_some() != d.is_some(), "exactly one link per page: {page}");
            pages.push(page.clone());
            assert!(pages.len() < 10_000, "nextLink loop");
            if let Some(d) = d {
                return Round { pages, delta_link: d.as_str().unwrap().to_owned() };
            }
            next = n.unwrap().as_str().unwrap().to_owned();
        }
    }

    pub async fn round(&self, url: &str) -> Round {
        self.round_with(url, &[]).await
    }

    pub async fn user(&self, name: &str) -> Uuid {
        let u = NewUser {
            fields: UserFields {
                display_name: Some(name.into()),
                user_principal_name: Some(format!("{}@contoso.example", name.replace(' ', "."))),
                ..UserFields::default()
            },
            ..NewUser::default()
        };
        self.admin.create_user(&u).await.unwrap().user.id
    }

    pub async fn group(&self, name: &str, unified: bool, members: &[Uuid]) -> Uuid {
        let g = NewGroup {
            fields: graph_sim::GroupFields {
                display_name: Some(name.into()),
                mail_nickname: Some(name.replace(' ', "-")),
                group_types: unified.then(|| vec!["Unified".to_owned()]),
                ..Default::default()
            },
            members: members.to_vec(),
            ..NewGroup::default()
        };
        self.admin.create_group(&g).await.unwrap().group.id
    }
}

pub async fn error_code(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap_or_default().to_owned(), v)
}
