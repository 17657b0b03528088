"""Rebuild the reference lists under compliance/ from the public sources they come from.

Each list holds the requirement ids (with titles) that a control in template/compliance/controls.yaml
may cite for one framework or threat list, so that no catalogue entry names a clause that does not
exist. The lists are derived, never typed: every id here was read out of a source named in the
file's `sources` block, at the commit recorded there.

Usage (Python 3.11+, PyYAML, git):

    python compliance/frameworks/build.py --repos DIR           # rewrite the lists
    python compliance/frameworks/build.py --repos DIR --check   # exit 1 when a list would change

DIR holds git clones (bare or not) of the repositories in SOURCES, as DIR/<owner>+<name>,
DIR/<owner>+<name>/repo, DIR/<owner>/<name> or DIR/<name>. Every file is read with
`git show <commit>:<path>` at the commit pinned in SOURCES, so a clone of any later state works as
long as it holds that commit. To refresh a list, move its commit (and path, if the source moved)
in SOURCES, run the script, and read the diff. compliance/README.md describes each list.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent  # compliance/
TITLE_MAX = 120  # statements (SOC 2, PCI DSS, GDPR) are cut to this many characters


@dataclass(frozen=True)
class Source:
    repo: str
    commit: str


SOURCES = {
    # NIST OSCAL content. 88bb8de is the newest main in the stored snapshot (2025-06-03; catalog
    # 5.1.1+u4). a849dbc (2021-06-08, catalog 5.0.1) is the newest commit whose *full* rev5
    # catalog could be read: later versions of that file are over 4 MiB and were not available.
    "oscal": Source("usnistgov/oscal-content", "88bb8deeaa815f8914d68ea7e31a622ebbc1719d"),
    "oscal-501": Source("usnistgov/oscal-content", "a849dbca4649e0cc626fefdd46cf5232c8308f4c"),
    "fedramp": Source("GSA/fedramp-automation", "c784140bc6d1ac9fa159aabc0e8a29e9aa2c63a9"),
    "cac": Source("ComplianceAsCode/content", "b3a2cca9352cbcefb7f00d770bfd6f679da18d6a"),
    "ciso": Source("intuitem/ciso-assistant-community", "f990d7b1b9a9f56e391acbc247c9076262a11412"),
    "aptible": Source("aptible/www.aptible.com", "7115acc547332fa98a8f58ec0ab2a659878af2ce"),
    "cis-cas": Source("CISecurity/ControlsAssessmentSpecification", "4df1f96d7c74cbda2017cff114dedee1f64c3347"),
    "kube-bench": Source("aquasecurity/kube-bench", "a73ce378418c71c5861e6963753f50dec3badadf"),
    "docker-bench": Source("docker/docker-bench-security", "ff26d67f25be60fc2d82a01710ee14570b2cb9db"),
    "owasp-mcp": Source("OWASP/www-project-mcp-top-10", "4774c5e5ae345e38c3c397e6ec42469ecf9bfc97"),
    "mcp": Source("modelcontextprotocol/modelcontextprotocol", "b0f60ba5409db7a6582440a7b473cc0398890f15"),
}

KUBE_BENCH_DIR = "cfg/cis-1.12"  # the newest cis-* folder of kube-bench (cfg/config.yaml maps 1.32-1.34)
MCP_SPEC_VERSIONS = ["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"]  # dated versions with the page
GDPR_ARTICLES = ["5", "24", "25", "28", "30", "32", "33", "34", "35"]


class Repos:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.used: dict[str, list[str]] = {}

    def _dir(self, repo: str) -> Path:
        owner, name = repo.split("/")
        for cand in (f"{owner}+{name}/repo", f"{owner}+{name}", f"{owner}/{name}", name):
            path = self.base / cand
            if path.is_dir():
                return path
        sys.exit(f"build.py: no clone of {repo} under {self.base}")

    def _git(self, key: str, *args: str) -> str:
        src = SOURCES[key]
        result = subprocess.run(["git", "-C", str(self._dir(src.repo)), *args], capture_output=True, check=False)
        if result.returncode:
            sys.exit(f"build.py: git {' '.join(args)} in {src.repo} failed: {result.stderr.decode().strip()}")
        try:
            return result.stdout.decode("utf-8")
        except UnicodeDecodeError:  # a few CIS pages are Windows-1252
            return result.stdout.decode("cp1252")

    def show(self, key: str, path: str) -> str:
        self.used.setdefault(key, []).append(path)
        return self._git(key, "show", f"{SOURCES[key].commit}:{path}")

    def ls(self, key: str, folder: str) -> list[str]:
        out = self._git(key, "ls-tree", "-z", "--name-only", SOURCES[key].commit, folder.rstrip("/") + "/")
        return [p for p in out.split("\0") if p]

    def date(self, key: str) -> str:
        return self._git(key, "log", "-1", "--format=%cs", SOURCES[key].commit).strip()


def one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    if limit and len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:(") + " …"
    return text


def sources_block(repos: Repos, *entries: tuple[str, list[str]]) -> list[dict]:
    return [
        {
            "repository": f"https://github.com/{SOURCES[key].repo}",
            "commit": SOURCES[key].commit,
            "commit_date": repos.date(key),
            "paths": paths,
        }
        for key, paths in entries
    ]


# ---------------------------------------------------------------------------------------------
# NIST SP 800-53 Rev. 5 and the FedRAMP Moderate baseline


def oscal_label(control_id: str) -> str:
    """ac-2.1 -> AC-2(1); the catalog's own labels are zero-padded since 5.1 (AC-02(01))."""
    base, _, enh = control_id.partition(".")
    family, number = base.split("-")
    return f"{family.upper()}-{int(number)}" + (f"({int(enh)})" if enh else "")


def oscal_controls(catalog: dict) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}

    def walk(control: dict) -> None:
        props = {p["name"]: p.get("value") for p in control.get("props", [])}
        out[control["id"]] = (control["title"], props.get("status"))
        for sub in control.get("controls", []):
            walk(sub)

    for group in catalog.get("groups", []):
        for control in group.get("controls", []):
            walk(control)
    return out


def cac_nist_titles(repos: Repos) -> tuple[dict[str, str], list[str]]:
    folder = "products/rhel10/controls/nist_800_53"
    titles: dict[str, str] = {}

    def walk(controls: list | None) -> None:
        for control in controls or []:
            titles[control["id"]] = one_line(control["title"])
            walk(control.get("controls"))

    paths = [p for p in repos.ls("cac", folder) if p.endswith(".yml")]
    for path in paths:
        walk(yaml.safe_load(repos.show("cac", path))["controls"])
    return titles, paths


def build_nist(repos: Repos) -> dict:
    full_path = "nist.gov/SP800-53/rev5/json/NIST_SP-800-53_rev5_catalog.json"
    full = json.loads(repos.show("oscal-501", full_path))["catalog"]
    v501 = oscal_controls(full)

    baseline_paths = [
        f"nist.gov/SP800-53/rev5/json/NIST_SP-800-53_rev5_{name}.json"
        for name in (
            "LOW-baseline-resolved-profile_catalog",
            "MODERATE-baseline-resolved-profile_catalog",
            "HIGH-baseline-resolved-profile_catalog-min",
            "PRIVACY-baseline-resolved-profile_catalog",
        )
    ]
    v511: dict[str, tuple[str, str | None]] = {}
    v511_version = ""
    for path in baseline_paths:
        catalog = json.loads(repos.show("oscal", path))["catalog"]
        v511_version = catalog["metadata"]["version"]
        v511.update(oscal_controls(catalog))

    cac, cac_paths = cac_nist_titles(repos)
    # CaC's titles must be the catalog's: check them on every control the 5.1.1 baselines carry.
    mismatched = sorted(k for k, (title, _) in v511.items() if cac.get(k) != title)
    if mismatched:
        sys.exit(f"build.py: ComplianceAsCode NIST titles differ from NIST OSCAL 5.1.1 for {mismatched[:10]}")
    unknown = sorted(k for k in v511 if k not in v501)
    if unknown:
        sys.exit(f"build.py: 5.1.1 baseline controls missing from the 5.0.1 catalog: {unknown}")

    active = {k: v for k, v in v501.items() if v[1] != "withdrawn"}
    withdrawn = len(v501) - len(active)
    added = sorted(k for k in cac if k not in v501)
    refs: dict[str, str] = {}
    ids = list(active) + added
    ids.sort(key=lambda k: (k.split("-")[0], [int(x) for x in k.split("-")[1].split(".")]))
    for key in ids:
        if key in v511:
            title = v511[key][0]
        elif key in cac:
            title = cac[key]
        else:
            title = active[key][0]
        refs[oscal_label(key)] = one_line(title)
    return {
        "id": "nist-800-53",
        "name": "NIST SP 800-53 Rev. 5",
        "version": (
            f"Rev. 5: ids and withdrawn status of catalog {full['metadata']['version']}, titles of "
            f"{v511_version}, {len(added)} controls added since"
        ),
        "source": (
            "NIST OSCAL content (usnistgov/oscal-content): the full Rev. 5 catalog "
            f"{full_path} (version {full['metadata']['version']}) and the resolved LOW, MODERATE, HIGH "
            f"and PRIVACY baseline catalogs ({v511_version}); ComplianceAsCode/content "
            "products/rhel10/controls/nist_800_53/ for controls added after 5.0.1."
        ),
        "note": (
            f"Ids are the catalog's controls and enhancements, written without zero padding (AC-2(1), "
            f"not the catalog label AC-02(01)). The {withdrawn} controls and enhancements the 5.0.1 catalog "
            f"marks withdrawn are left out ({len(v501)} in that catalog, {len(active)} active). The full "
            "catalog of 5.1.1 and later could not be read (over 4 MiB, it was missing from the repository "
            "snapshot this list was built from), "
            "so: titles come from the 5.1.1 resolved baseline catalogs for the "
            f"{len(v511)} controls they carry, otherwise from ComplianceAsCode's nist_800_53 control files, "
            "which its utils/nist_sync generates from NIST's OSCAL catalog and which agree with the 5.1.1 "
            f"titles on all {len(v511)} baseline controls (build.py checks this); their titles differ from "
            "5.0.1 only in capitalisation. The "
            f"{len(added)} ids ComplianceAsCode has and 5.0.1 does not ({', '.join(oscal_label(a) for a in added)}) "
            "are added from those files. Not verified: whether a control active in 5.0.1 was withdrawn "
            "later (no withdrawal is known to build.py; ComplianceAsCode does not carry the status)."
        ),
        "sources": sources_block(
            repos,
            ("oscal-501", [full_path]),
            ("oscal", baseline_paths),
            ("cac", cac_paths),
        ),
        "references": refs,
    }


def build_fedramp(repos: Repos, nist: dict) -> dict:
    path = "dist/content/rev5/baselines/json/FedRAMP_rev5_MODERATE-baseline_profile.json"
    profile = json.loads(repos.show("fedramp", path))["profile"]
    ids: list[str] = []
    for imp in profile["imports"]:
        for include in imp.get("include-controls", []):
            ids.extend(include.get("with-ids", []))
    labels = [oscal_label(i) for i in ids]
    missing = [x for x in labels if x not in nist["references"]]
    if missing:
        sys.exit(f"build.py: FedRAMP Moderate ids not in the NIST list: {missing}")
    meta = profile["metadata"]
    return {
        "id": "fedramp",
        "name": "FedRAMP Rev. 5 Moderate baseline",
        "version": f"{meta['title']}, {meta.get('version')} ({meta.get('last-modified')})",
        "source": f"GSA/fedramp-automation {path} (FedRAMP's own OSCAL profile)",
        "note": (
            "The NIST SP 800-53 Rev. 5 controls and enhancements the FedRAMP Moderate profile selects "
            "(include-controls with-ids), written like the nist-800-53 list; titles are taken from that "
            "list. FedRAMP parameter values and additional requirements are not part of the list."
        ),
        "sources": sources_block(repos, ("fedramp", [path])),
        "references": {label: nist["references"][label] for label in labels},
    }


# ---------------------------------------------------------------------------------------------
# Lists packaged by CISO Assistant (intuitem/ciso-assistant-community backend/library/libraries)


def ciso_library(repos: Repos, name: str) -> tuple[list[dict], str]:
    """The requirement nodes of a CISO Assistant library, and the library's path."""
    path = f"backend/library/libraries/{name}"
    library = yaml.safe_load(repos.show("ciso", path))
    return library["objects"]["framework"]["requirement_nodes"], path


def build_soc2(repos: Repos) -> dict:
    nodes, path = ciso_library(repos, "soc2_2017_with_rev_2022.yaml")
    check_nodes, check_path = ciso_library(repos, "soc2-2017.yaml")
    criterion = re.compile(r"(CC|A|C|PI|PP|P)\d+\.\d+")
    prefix = re.compile(r"^COSO Principle \d+: ")

    def criteria(nodes: list[dict]) -> dict[str, str]:
        out = {}
        for node in nodes:
            ref = str(node.get("ref_id", ""))
            if criterion.fullmatch(ref) and not ref.endswith(".0"):
                # The 2022 library writes the processing-integrity criteria PP1.1-PP1.5; the
                # AICPA's ids (and the same library's 2017 edition) are PI1.1-PI1.5.
                out[re.sub(r"^PP", "PI", ref)] = prefix.sub("", one_line(node.get("description", "")))
        return out

    refs, refs_2017 = criteria(nodes), criteria(check_nodes)
    if set(refs) != set(refs_2017):
        sys.exit(f"build.py: SOC 2 criteria differ between editions: {set(refs) ^ set(refs_2017)}")
    order = {"CC": 0, "A": 1, "C": 2, "PI": 3, "P": 4}

    def key(ref: str) -> tuple:
        m = re.match(r"([A-Z]+)(\d+)\.(\d+)", ref)
        return order[m.group(1)], int(m.group(2)), int(m.group(3))

    return {
        "id": "soc2",
        "name": "AICPA Trust Services Criteria (2017, revised points of focus 2022)",
        "version": "TSP Section 100, 2017 TSC with revised points of focus (2022)",
        "source": (
            f"intuitem/ciso-assistant-community {path} (CISO Assistant's packaging of the AICPA text), "
            f"cross-checked against {check_path}"
        ),
        "note": (
            "The criteria (CC1.1-CC9.2 common criteria, A1.x availability, C1.x confidentiality, PI1.x "
            "processing integrity, P1.1-P8.1 privacy); the points of focus (CC1.1.1 ...) and the privacy "
            "group headings P1.0-P8.0 are not ids here. Titles are the criterion statements cut to "
            f"{TITLE_MAX} characters (the text is the AICPA's, copyright AICPA). The 2022 library spells "
            "the processing-integrity criteria PP1.1-PP1.5; they are written PI1.1-PI1.5 here, as in the "
            "AICPA text and the 2017 library, which has the same 61 criteria."
        ),
        "sources": sources_block(repos, ("ciso", [path, check_path])),
        "references": {ref: one_line(refs[ref], TITLE_MAX) for ref in sorted(refs, key=key)},
    }


def build_iso(repos: Repos) -> dict:
    nodes, path = ciso_library(repos, "iso27001-2022.yaml")
    refs = {
        str(n["ref_id"]): one_line(n["name"]) for n in nodes if re.fullmatch(r"A\.[5-8]\.\d+", str(n.get("ref_id", "")))
    }
    return {
        "id": "iso27001",
        "name": "ISO/IEC 27001:2022 Annex A",
        "version": "ISO/IEC 27001:2022",
        "source": f"intuitem/ciso-assistant-community {path} (CISO Assistant's outline of the standard)",
        "note": (
            "The 93 Annex A controls A.5.1-A.8.34 with their titles; the theme headings A.5-A.8 and the "
            "management-system clauses 4-10 are not in the list."
        ),
        "sources": sources_block(repos, ("ciso", [path])),
        "references": refs,
    }


def build_gdpr(repos: Repos) -> dict:
    nodes, path = ciso_library(repos, "gdpr.yaml")
    articles: dict[str, str] = {}
    for node in nodes:
        m = re.fullmatch(r"Article (\d+)", str(node.get("ref_id", "")))
        if m:
            articles[m.group(1)] = one_line(node.get("description") or node.get("name") or "")
    refs: dict[str, str] = {}
    for article in GDPR_ARTICLES:
        refs[article] = f"Art. {article} {articles[article]}"
        for node in nodes:
            parts = str(node.get("ref_id", "")).split(".")
            if parts[0] != article or len(parts) < 2:
                continue
            ref = parts[0] + "".join(f"({p})" for p in parts[1:])
            text = one_line(node.get("description", ""), TITLE_MAX)
            refs[ref] = f"Art. {ref} {articles[article]}: {text}"
    return {
        "id": "gdpr",
        "name": "Regulation (EU) 2016/679 (GDPR)",
        "version": "OJ L 119, 4.5.2016 (CELEX 32016R0679)",
        "source": (
            f"The regulation's text as published on EUR-Lex (CELEX 32016R0679), read from "
            f"intuitem/ciso-assistant-community {path}, which carries it paragraph by paragraph"
        ),
        "note": (
            "Articles " + ", ".join(GDPR_ARTICLES) + " with every paragraph and point, written "
            "32, 32(1), 32(1)(a): principles (5), controller responsibility (24), data protection by design "
            "and by default (25), processor (28), records (30), security of processing (32), breach "
            "notification and communication (33, 34) and DPIA (35). Titles are the article heading and the "
            f"start of the paragraph text (cut to {TITLE_MAX} characters). Other articles are left out; "
            "add them to GDPR_ARTICLES in build.py when a control needs one."
        ),
        "sources": sources_block(repos, ("ciso", [path])),
        "references": refs,
    }


# ---------------------------------------------------------------------------------------------
# PCI DSS v4.0.1 and HIPAA from ComplianceAsCode and the regulation text


def build_pci(repos: Repos) -> dict:
    path = "controls/pcidss_4.yml"
    policy = yaml.safe_load(repos.show("cac", path))
    ciso_nodes, ciso_path = ciso_library(repos, "pcidss-4_0.yaml")
    ciso_ids = {str(n.get("ref_id")) for n in ciso_nodes if n.get("ref_id")}
    refs: dict[str, str] = {}
    renamed = {"A3.3.1.2": "A3.3.1.1"}  # CaC's own note: "this requirement should be A3.3.1.1"

    def walk(controls: list | None) -> None:
        for control in controls or []:
            ref = renamed.get(str(control["id"]), str(control["id"]))
            refs[ref] = one_line(control.get("title", ""), TITLE_MAX)
            walk(control.get("controls"))

    walk(policy["controls"])
    missing = sorted(set(refs) - ciso_ids)
    if missing:
        sys.exit(f"build.py: PCI DSS ids not in the CISO Assistant library: {missing}")
    return {
        "id": "pci-dss",
        "name": "PCI DSS v4.0.1",
        "version": str(policy.get("version")),
        "source": f"ComplianceAsCode/content {path} (its source: {policy.get('source')})",
        "note": (
            "Every requirement id of the policy file: the x.y headings (1.1 ...), the defined "
            "requirements x.y.z and x.y.z.w, and Appendix A1-A3 (A1.1.1 ...); the 12 principal "
            "requirements are not ids here. Titles are the requirement statements cut to "
            f"{TITLE_MAX} characters. One id is corrected: the file writes A3.3.1.2 and notes it should "
            "be A3.3.1.1, which is how CISO Assistant's PCI DSS 4.0.1 library numbers it. Every id is "
            f"checked against that library ({ciso_path})."
        ),
        "sources": sources_block(repos, ("cac", [path]), ("ciso", [ciso_path])),
        "references": refs,
    }


HIPAA_SECTIONS = [
    ("164.308", "164-308-administrative-safeguards"),
    ("164.310", "164-310-physical-safeguards"),
    ("164.312", "164-312-technical-safeguards"),
    ("164.314", "164-314-organizational-requirements"),
    ("164.316", "164-316-policies-procedures-documentation"),
]
SPEC = re.compile(r"^(?:Implementation specifications?:?\s*)?(.*?)\s*\((Required|Addressable)\)\.?\s*(.*)$")


def hipaa_paragraphs(text: str) -> list[tuple[list[str], str]]:
    """[(['a', '1', 'ii', 'A'], 'Risk analysis (Required). ...'), ...] from the markdown rendering."""
    paragraphs: list[tuple[int, str, str]] = []  # (depth, label, text)
    for raw in text.replace("&#40;", "(").splitlines():
        line = raw.strip()
        if not line or line.startswith("[68 FR"):
            continue
        m = re.match(r"^((?:>\s*)*)\(([a-z]|[A-Z]|[0-9]+|[ivx]+)\)\s*(.*)$", line)
        if m:
            paragraphs.append((m.group(1).count(">"), m.group(2), m.group(3)))
        elif paragraphs and not line.startswith(">"):
            d, label, body = paragraphs[-1]
            paragraphs[-1] = (d, label, f"{body} {line}")
    out: list[tuple[list[str], str]] = []
    stack: list[tuple[int, str]] = []
    for depth, label, body in paragraphs:
        while stack and stack[-1][0] >= depth:
            stack.pop()
        stack.append((depth, label))
        out.append(([lbl for _, lbl in stack], one_line(re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", body))))
    return out


def build_hipaa(repos: Repos) -> dict:
    toc = yaml.safe_load(repos.show("aptible", "data/hipaa.yml"))
    headings: dict[str, str] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if str(node.get("id", "")).startswith("§ 164."):
                headings[node["id"][2:]] = node["title"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc)
    refs: dict[str, str] = {}
    paths = ["data/hipaa.yml"]
    for section, slug in HIPAA_SECTIONS:
        path = f"source/hipaa/regulations/{slug}.md"
        paths.append(path)
        refs[section] = headings[section]
        paragraphs = hipaa_paragraphs(repos.show("aptible", path))
        kinds: dict[str, str] = {}  # ref -> "required"/"addressable" for a container's children
        entries: dict[str, str] = {}
        standard = ""  # the last standard read: the one an "Implementation specifications" paragraph serves
        for index, (labels, body) in enumerate(paragraphs):
            ref = section + "".join(f"({x})" for x in labels)
            parent = section + "".join(f"({x})" for x in labels[:-1])
            if body.startswith("Standard:"):
                standard = one_line(body[len("Standard:") :].split(".")[0])
                entries[ref] = f"{standard} (standard)"
                continue
            m = SPEC.match(body)
            if m and m.group(1):
                entries[ref] = f"{m.group(1)} ({m.group(2).lower()} implementation specification)"
                continue
            if m:  # "Implementation specifications (Required)." marks its children (164.314(a)(2), (b)(2))
                kinds[ref] = m.group(2).lower()
                entries[ref] = f"{standard}: implementation specifications ({kinds[ref]})"
                continue
            heading = body.split(".")[0]
            if not body:
                # An empty paragraph whose first child is a standard: the standard and its specifications.
                child = paragraphs[index + 1] if index + 1 < len(paragraphs) else None
                if child and child[1].startswith("Standard:") and child[0][:-1] == labels:
                    name = one_line(child[1][len("Standard:") :].split(".")[0])
                    entries[ref] = f"{name} (standard with its implementation specifications)"
            elif body.startswith("Implementation specification"):  # "(ii) Implementation specifications:"
                entries[ref] = f"{standard}: implementation specifications"
            elif parent in kinds and len(heading.split()) <= 8:
                entries[ref] = f"{heading} ({kinds[parent]} implementation specification)"
            elif len(labels) == 2 and len(heading.split()) <= 8 and heading[0].isupper():
                entries[ref] = heading  # 164.308(b)(1): titled, but not marked "Standard:"
        refs.update(entries)
    return {
        "id": "hipaa",
        "name": "HIPAA Security Rule (45 CFR Part 164 Subpart C)",
        "version": "45 CFR 164.308-164.316 as amended at 78 FR 5694, Jan. 25, 2013",
        "source": (
            "The eCFR text of 45 CFR 164.308, .310, .312, .314 and .316, read from aptible/www.aptible.com "
            "source/hipaa/regulations/*.md, which renders the regulation paragraph by paragraph; section "
            "headings from its data/hipaa.yml"
        ),
        "note": (
            "The five sections, every standard, every implementation specification with (required) or "
            "(addressable) as the rule marks it, the paragraphs that introduce a standard's implementation "
            "specifications (164.312(a)(2) ...) and the paragraphs that group a standard with them "
            "(164.308(a)(1), 164.312(a) ...), so 164.312(a), 164.312(a)(1) and 164.312(a)(2)(iv) can all be "
            "cited. Ids follow the CFR paragraph structure, e.g. 164.312(e)(2)(ii). Left out: "
            "164.302-164.306 and 164.318 (applicability, definitions, general rules, compliance dates), "
            "164.308(b)(2), and the untitled list items under 164.314(a)(2)(i), 164.314(b)(2) and "
            "164.316(b)(1). The text is the rule as last amended in 2013 (78 FR 5694); the changes HHS "
            "proposed in 2025 are not in it."
        ),
        "sources": sources_block(repos, ("aptible", paths)),
        "references": refs,
    }


# ---------------------------------------------------------------------------------------------
# CIS: Kubernetes Benchmark (kube-bench), Docker Benchmark (docker-bench-security), Controls v8


def build_cis_kubernetes(repos: Repos) -> dict:
    refs: dict[str, str] = {}
    paths = []
    for name in ("master", "etcd", "controlplane", "node", "policies"):
        path = f"{KUBE_BENCH_DIR}/{name}.yaml"
        paths.append(path)
        doc = yaml.safe_load(repos.show("kube-bench", path))
        version = doc["version"]
        refs.setdefault(str(doc["id"]), one_line(doc["text"]))
        for group in doc["groups"]:
            refs.setdefault(str(group["id"]), one_line(group["text"]))
            for check in group.get("checks", []):
                refs[str(check["id"])] = one_line(check["text"])
    config = "cfg/config.yaml"
    mapping = yaml.safe_load(repos.show("kube-bench", config))["version_mapping"]
    folder = KUBE_BENCH_DIR.split("/")[-1]
    k8s = sorted((k for k, v in mapping.items() if v == folder), key=lambda v: [int(x) for x in v.split(".")])
    bench_version = version.removeprefix("cis-")
    return {
        "id": "cis-kubernetes",
        "name": f"CIS Kubernetes Benchmark v{bench_version}",
        "version": f"{version} (kube-bench maps Kubernetes {', '.join(k8s)} to it)",
        "source": f"aquasecurity/kube-bench {KUBE_BENCH_DIR}/*.yaml, the newest cis-* folder",
        "note": (
            "Sections (1 control plane, 2 etcd, 3 control plane configuration, 4 worker nodes, 5 policies), "
            "groups (1.1, 5.2 ...) and recommendations (1.2.1, 5.2.2 ...) with kube-bench's text, which "
            "ends in (Automated) or (Manual) as the benchmark marks it. Managed-service benchmarks "
            "(EKS, GKE, AKS ...) have their own numbering and are not in this list."
        ),
        "sources": sources_block(repos, ("kube-bench", [*paths, config])),
        "references": dict(sorted(refs.items(), key=lambda kv: [int(x) for x in kv[0].split(".")])),
    }


def build_cis_docker(repos: Repos) -> dict:
    refs: dict[str, str] = {}
    paths = [p for p in repos.ls("docker-bench", "tests") if re.match(r"tests/[1-7]_\w+\.sh$", p)]
    for path in paths:
        text = repos.show("docker-bench", path)
        for m in re.finditer(r'local id="([0-9.]+)"\s*\n\s*local desc="([^"]*)"', text):
            if m.group(1) in refs and refs[m.group(1)] != m.group(2):
                sys.exit(f"build.py: docker-bench id {m.group(1)} has two descriptions")
            refs[m.group(1)] = one_line(m.group(2))
    readme = repos.show("docker-bench", "README.md")
    version = re.search(r"CIS Docker Benchmark v([0-9.]+)", readme).group(1)
    return {
        "id": "cis-docker",
        "name": f"CIS Docker Benchmark v{version}",
        "version": f"v{version} (docker-bench-security README: the tests are based on it)",
        "source": "docker/docker-bench-security tests/1_*.sh ... tests/7_*.sh (id= and desc= of each check)",
        "note": (
            "Sections 1-7 (host, daemon configuration, daemon configuration files, images, container "
            "runtime, security operations, swarm) with their sub-sections and recommendations, with "
            "docker-bench's text as it is: most end in (Automated) or (Manual), "
            f"{sum('Scored)' in t for t in refs.values())} still in the older "
            "(Scored)/(Not Scored). Left out: tests/8 (Docker Enterprise "
            "configuration) and tests/99 (community checks, ids C.x, not benchmark ids)."
        ),
        "sources": sources_block(repos, ("docker-bench", [*paths, "README.md"])),
        "references": dict(sorted(refs.items(), key=lambda kv: [int(x) for x in kv[0].split(".")])),
    }


def build_cis_controls(repos: Repos) -> dict:
    refs: dict[str, str] = {}
    paths = []
    for number in range(1, 19):
        path = f"control-{number}/index.rst"
        paths.append(path)
        text = repos.show("cis-cas", path)
        heading = re.match(r"CIS Control (\d+): (.+)", text.splitlines()[0])
        refs[heading.group(1)] = one_line(heading.group(2))
        # The toctree lists the safeguards of v8 (the folders still hold files of retired ones);
        # each safeguard's title is the heading of its own page, "1.1: Establish and Maintain ...".
        for number_dot in re.findall(r"<control-(\d+\.\d+)>", text):
            page = f"control-{number}/control-{number_dot}.rst"
            paths.append(page)
            m = re.match(r"(\d+\.\d+): (.+)", repos.show("cis-cas", page).splitlines()[0])
            if m.group(1) != number_dot:
                sys.exit(f"build.py: {page} is headed {m.group(1)}")
            refs[number_dot] = one_line(m.group(2))
    safeguards = [k for k in refs if "." in k]
    if len(safeguards) != 153:
        sys.exit(f"build.py: {len(safeguards)} CIS safeguards, expected 153")
    return {
        "id": "cis-controls-v8",
        "name": "CIS Critical Security Controls v8",
        "version": "v8 (CIS Controls Assessment Specification, release 2025 Q1)",
        "source": (
            "CISecurity/ControlsAssessmentSpecification control-N/index.rst (CIS's own repository; archived "
            "2025-03, continued at cas8.docs.cisecurity.org)"
        ),
        "note": (
            "The 18 controls (1 ... 18) and the 153 safeguards 1.1 ... 18.5 with their titles, taken from "
            "each control's table of contents. control-18/ still holds control-18.6 ... 18.11 files from "
            "v7.1 that no table of contents lists; they are left out. CIS's terms of use apply to the titles "
            "(the repository's LICENSE.md points to them)."
        ),
        "sources": sources_block(repos, ("cis-cas", paths)),
        "references": dict(sorted(refs.items(), key=lambda kv: [int(x) for x in kv[0].split(".")])),
    }


# ---------------------------------------------------------------------------------------------
# Threat lists: OWASP MCP Top 10 and the MCP specification's Security Best Practices


def build_owasp_mcp(repos: Repos) -> dict:
    refs: dict[str, str] = {}
    paths = sorted(p for p in repos.ls("owasp-mcp", "2025") if re.match(r"2025/MCP\d\d-", p))
    for path in paths:
        front = repos.show("owasp-mcp", path).split("---")[1]
        title = yaml.safe_load(front)["title"]
        m = re.match(r"(MCP\d\d):(\d{4})\s*[-\u2013]\s*(.+)", title)
        refs[m.group(1)] = one_line(m.group(3))
    index = repos.show("owasp-mcp", "index.md")
    stage = re.search(r"Phase \d+ [\u2013-] ([^\n]*?) - We are here right now", index)
    return {
        "id": "owasp-mcp-top10",
        "name": "OWASP MCP Top 10 (2025)",
        "version": f"2025 list; project stage: {stage.group(1) if stage else 'see index.md'}",
        "source": "OWASP/www-project-mcp-top-10 2025/MCP*.md (front-matter title of each entry)",
        "note": (
            "Ids MCP01 ... MCP10 of the 2025 list, written as in the entry pages (MCP01:2025 -> MCP01). "
            "The project is in beta: tab_top10.md still names MCP06 'Prompt Injection via Contextual "
            "Payloads', while its entry page and index.md call it 'Intent Flow Subversion'; the entry page "
            "wins here."
        ),
        "sources": sources_block(repos, ("owasp-mcp", [*paths, "index.md"])),
        "references": refs,
    }


def slug(heading: str) -> str:
    heading = re.sub(r"\s*\(([A-Z]+)\)$", "", heading)  # "Server-Side Request Forgery (SSRF)" -> ...
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def build_mcp_practices(repos: Repos) -> dict:
    seen: dict[str, dict] = {}
    paths = []
    for version in MCP_SPEC_VERSIONS:
        path = f"docs/docs/{version}/tutorials/security/security_best_practices.mdx"
        paths.append(path)
        text = repos.show("mcp", path)
        section = text.split("## Attacks and Mitigations", 1)[1]
        for heading in re.findall(r"^### (.+?)\s*$", section, re.M):
            abbrev = re.search(r"\(([A-Z]{2,})\)$", heading)
            key = abbrev.group(1).lower() if abbrev else slug(heading)
            entry = seen.setdefault(key, {"title": heading, "versions": []})
            entry["title"] = heading
            entry["versions"].append(version)
    newest = MCP_SPEC_VERSIONS[-1]
    refs = {}
    for key, entry in seen.items():
        title = entry["title"]
        if newest not in entry["versions"]:
            title += f" (spec {entry['versions'][0]} to {entry['versions'][-1]}; not in {newest})"
        refs[key] = title
    return {
        "id": "mcp-security-best-practices",
        "name": "MCP specification: Security Best Practices",
        "version": f"{newest} (newest dated version); headings of {', '.join(MCP_SPEC_VERSIONS)} kept",
        "source": (
            "modelcontextprotocol/modelcontextprotocol docs/docs/<version>/tutorials/security/"
            "security_best_practices.mdx (the page moved there from docs/specification/<version>/basic/)"
        ),
        "note": (
            "One id per attack section (### heading under 'Attacks and Mitigations'): the heading as a "
            "lower-case slug, or its abbreviation when it ends in one (Server-Side Request Forgery (SSRF) "
            f"-> ssrf). Sections of earlier dated versions that {newest} no longer has stay in the list, "
            f"marked in the title: {newest} removed protocol-level sessions, so Session Hijacking became "
            "State Handle Hijacking. spec_versions says which versions carry each section."
        ),
        "sources": sources_block(repos, ("mcp", paths)),
        "spec_versions": {key: entry["versions"] for key, entry in seen.items()},
        "references": refs,
    }


# ---------------------------------------------------------------------------------------------

HEADER = (
    "# Generated by compliance/frameworks/build.py from the sources below; do not edit by hand.\n"
    "# compliance/README.md says how to refresh it.\n"
)


def render(data: dict) -> str:
    body = dict(data)
    body["count"] = len(data["references"])
    order = ["id", "name", "version", "count", "source", "note", "sources", "spec_versions", "references"]
    body = {k: body[k] for k in order if k in body}
    return HEADER + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)


def outputs(repos: Repos) -> Iterable[tuple[Path, dict]]:
    frameworks = ROOT / "frameworks"
    threats = ROOT / "threats"
    nist = build_nist(repos)
    builders: list[tuple[Path, Callable[[], dict]]] = [
        (frameworks / "nist-800-53.yaml", lambda: nist),
        (frameworks / "fedramp.yaml", lambda: build_fedramp(repos, nist)),
        (frameworks / "soc2.yaml", lambda: build_soc2(repos)),
        (frameworks / "iso27001.yaml", lambda: build_iso(repos)),
        (frameworks / "pci-dss.yaml", lambda: build_pci(repos)),
        (frameworks / "hipaa.yaml", lambda: build_hipaa(repos)),
        (frameworks / "gdpr.yaml", lambda: build_gdpr(repos)),
        (frameworks / "cis-kubernetes.yaml", lambda: build_cis_kubernetes(repos)),
        (frameworks / "cis-docker.yaml", lambda: build_cis_docker(repos)),
        (frameworks / "cis-controls-v8.yaml", lambda: build_cis_controls(repos)),
        (threats / "owasp-mcp-top10.yaml", lambda: build_owasp_mcp(repos)),
        (threats / "mcp-security-best-practices.yaml", lambda: build_mcp_practices(repos)),
    ]
    for path, build in builders:
        yield path, build()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=Path, required=True, help="folder holding git clones of the sources")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a list would change")
    args = parser.parse_args()
    repos = Repos(args.repos)
    changed = []
    for path, data in outputs(repos):
        text = render(data)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            changed.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        print(f"{path.relative_to(ROOT.parent)}: {len(data['references'])} ids")
    if args.check and changed:
        print("out of date: " + ", ".join(str(p.relative_to(ROOT.parent)) for p in changed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
