"""What anonymous callers learn from a live server: user listings without emails or superuser
flags, no /+metrics by default, and no private index names anywhere (issue #15 item 10)."""

from __future__ import annotations

import json

import pytest

from tests.builders import make_wheel
from tests.conftest import LiveServer, basic_auth
from tests.e2e.helpers import ADMIN, api, publish

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-password")
PRIVATE = "zz-private"  # in the name of every private index: it must never show up
HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def site(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """alice (with an email) owns a private stage holding secret-pkg and a private mirror
    whose upstream has failed once; root/pypi and admin/dev stay public."""
    live = live_server
    status, body, _ = api(live, "PUT", "/alice", {"password": ALICE[1], "email": "a@corp.example"})
    assert status == 201, body
    private = {"acl_read": ["alice"]}
    status, body, _ = api(
        live, "PUT", f"/alice/{PRIVATE}-stage", {"bases": [], **private}, auth=ALICE
    )
    assert status == 201, body
    mirror = {"type": "mirror", "mirror_url": "http://127.0.0.1:9/simple/", **private}
    status, body, _ = api(live, "PUT", f"/alice/{PRIVATE}-mirror", mirror)  # as admin
    assert status == 201, body
    wheel = make_wheel("secret-pkg", "1.0")
    dist = tmp_path_factory.mktemp("dist")
    publish(live, f"alice/{PRIVATE}-stage", dist, wheel, user=ALICE[0], password=ALICE[1])
    status, _h, _b, _r = live.get(
        f"/alice/{PRIVATE}-mirror/+simple/anything/", headers={"Authorization": basic_auth(*ALICE)}
    )
    assert status in (502, 504)  # the upstream failed: the mirror has stats now
    return live


def test_anonymous_user_listings_show_no_emails_superusers_or_private_indexes(
    site: LiveServer,
) -> None:
    """GET / and GET /alice as JSON (devpi use -l, devpi getjson): names and readable indexes."""
    for path in ("/", "/alice"):
        status, _headers, body, _ = site.get(path, headers=JSON)
        assert status == 200
        text = body.decode()
        assert PRIVATE not in text
        assert "a@corp.example" not in text
        assert "is_superuser" not in text
        assert "email" not in text
    users = json.loads(site.get("/", headers=JSON)[2])["result"]
    assert set(users) >= {"admin", "alice", "root"}
    assert users["admin"]["indexes"]["dev"]["type"] == "stage"


def test_users_see_their_own_email_and_superusers_see_everything(site: LiveServer) -> None:
    """alice sees her own email, not admin's flag; admin sees both."""
    as_alice = api(site, "GET", "/", auth=ALICE)[1]["result"]
    as_admin = api(site, "GET", "/", auth=ADMIN)[1]["result"]

    assert as_alice["alice"]["email"] == "a@corp.example"
    assert "is_superuser" not in as_alice["admin"]
    assert as_admin["admin"]["is_superuser"] is True
    assert as_admin["alice"]["email"] == "a@corp.example"
    assert f"{PRIVATE}-stage" in as_admin["alice"]["indexes"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param("/", HTML, id="home"),
        pytest.param("/alice", HTML, id="user-page"),
        pytest.param("/+search?q=secret", HTML, id="search"),
        pytest.param("/+search?q=pkg", HTML, id="search-all"),
        pytest.param("/+status", {}, id="status"),
        pytest.param("/+api", JSON, id="api"),
        pytest.param("/alice/+api", JSON, id="user-api"),
        pytest.param("/root/pypi/+simple/", JSON, id="mirror-simple"),
    ],
)
def test_no_anonymous_answer_names_a_private_index(
    site: LiveServer, path: str, headers: dict[str, str]
) -> None:
    """Pages, search, the health report and devpi's API config."""
    status, _headers, body, _ = site.get(path, headers=headers)

    assert status == 200
    assert PRIVATE.encode() not in body
    assert b"secret-pkg" not in body


def test_status_lists_public_mirrors_to_anyone_and_private_ones_to_their_readers(
    site: LiveServer,
) -> None:
    """The Docker HEALTHCHECK (anonymous) still gets the state; alice sees her mirror."""
    anonymous = json.loads(site.get("/+status")[2])
    as_alice = json.loads(site.get("/+status", headers={"Authorization": basic_auth(*ALICE)})[2])

    assert anonymous["status"] == "degraded"  # a mirror fails; which one is not for strangers
    assert set(anonymous["mirrors"]) == {"root/pypi"}
    assert set(as_alice["mirrors"]) == {"root/pypi", f"alice/{PRIVATE}-mirror"}
    assert as_alice["mirrors"][f"alice/{PRIVATE}-mirror"]["upstream"] == "failing"


def test_metrics_need_a_superuser_by_default(site: LiveServer) -> None:
    """No METRICS_TOKEN, no METRICS_PUBLIC: anonymous 401, alice 403, admin the metrics with
    every mirror."""
    anonymous = site.get("/+metrics")
    as_alice = site.get("/+metrics", headers={"Authorization": basic_auth(*ALICE)})
    status, _headers, body, _ = site.get("/+metrics", headers={"Authorization": basic_auth(*ADMIN)})

    assert (anonymous[0], anonymous[3]) == (
        401,
        "Metrics need a superuser's credentials or the METRICS_TOKEN (or METRICS_PUBLIC=true).",
    )
    assert PRIVATE.encode() not in anonymous[2]
    assert as_alice[0] == 403
    assert status == 200
    assert f'pyshelf_upstream_up{{index="alice/{PRIVATE}-mirror"}} 0.0'.encode() in body
