"""The access rules themselves (server/access.py), on a workspace shaped like the demo's."""

from __future__ import annotations

from server.access import FolderNode, Grant, Person, Rules

CAMPAIGN, MARKETING, OPERATIONS, SERVICE, SERVICE_PRIVATE = 1, 2, 3, 4, 5


def workspace() -> Rules:
    rules = Rules()
    for node in (
        FolderNode(CAMPAIGN, None, None),
        FolderNode(MARKETING, CAMPAIGN, "市场部"),
        FolderNode(OPERATIONS, CAMPAIGN, "运营部"),
        FolderNode(SERVICE, CAMPAIGN, "客服部"),
        FolderNode(SERVICE_PRIVATE, SERVICE, None),
    ):
        rules.folders[node.id] = node
    # Customer service reads the marketing folder; everyone reads the board's folder.
    rules.folder_grants[MARKETING] = [Grant("read", department="客服部")]
    rules.folder_grants[OPERATIONS] = [Grant("read", everyone=True)]
    return rules


ANA = Person("ana", "市场部")
LI = Person("li", "客服部")
WANG = Person("wang", "运营部")
BOSS = Person("boss", "运营部", role="admin")


def test_the_owning_department_writes_and_grants_give_what_they_say() -> None:
    rules = workspace()
    plan = ("campaign-plan", MARKETING, None)
    assert rules.document_access(ANA, *plan) == "write"
    assert rules.document_access(LI, *plan) == "read"
    assert rules.document_access(WANG, *plan) == "none"
    assert rules.document_access(BOSS, *plan) == "write"
    board = ("board", OPERATIONS, None)
    assert [rules.document_access(p, *board) for p in (ANA, LI, WANG)] == ["read", "read", "write"]


def test_folders_inherit_and_a_private_folder_stays_private() -> None:
    rules = workspace()
    # A sub-folder without a department of its own belongs to its parent's department.
    assert rules.folder_access(LI, SERVICE_PRIVATE) == "write"
    assert rules.folder_access(ANA, SERVICE_PRIVATE) == "none"
    assert rules.document_access(WANG, "faq-draft", SERVICE_PRIVATE, None) == "none"
    # A grant on one document opens that document only.
    rules.doc_grants["faq"] = [Grant("read", user="ana")]
    assert rules.document_access(ANA, "faq", SERVICE_PRIVATE, None) == "read"
    assert rules.document_access(ANA, "faq-draft", SERVICE_PRIVATE, None) == "none"


def test_unclaimed_documents_are_open_and_a_claim_closes_them() -> None:
    rules = workspace()
    assert rules.document_access(WANG, "scratch", None, None) == "write"
    assert rules.document_access(WANG, "scratch", CAMPAIGN, None) == "write"
    rules.doc_grants["scratch"] = [Grant("read", department="市场部")]
    assert rules.document_access(WANG, "scratch", None, None) == "none"
    assert rules.document_access(ANA, "scratch", None, None) == "read"
    # A document's own department owns it, wherever it is.
    assert rules.document_access(LI, "faq", None, "客服部") == "write"
    assert rules.document_access(ANA, "faq", None, "客服部") == "none"


def test_an_inactive_user_has_no_access_anywhere() -> None:
    rules = workspace()
    gone = Person("ana", "市场部", active=False)
    assert rules.document_access(gone, "campaign-plan", MARKETING, None) == "none"
    assert rules.document_access(gone, "scratch", None, None) == "none"
    assert rules.document_access(Person("x", role="admin", active=False), "s", None, None) == "none"


def test_a_cycle_in_the_folder_tree_does_not_hang() -> None:
    rules = Rules()
    rules.folders[1] = FolderNode(1, 2, None)
    rules.folders[2] = FolderNode(2, 1, "市场部")
    assert rules.folder_access(ANA, 1) == "write"
    assert rules.folder_access(LI, 1) == "none"
