"""The Double-11 (双十一) example workspace, seeded by `tandem serve --demo` (TANDEM_DEMO=1).

An e-commerce company prepares its Double-11 campaign: marketing (市场部) plans and promotes
it, operations (运营部) runs it, customer service (客服部) answers the customers. The seed
writes what such a team would have a week or two before the campaign: the departments and
their people, a campaign folder with a sub-folder per department, the campaign task board,
the campaign plan, the operations plan, the customer-service FAQ, and two task discussions
between the departments.

Everything goes the way a user's change goes: workspace rows through
server.persistence.workspace, content as server-side edits of the live rooms with origin
"rest" and the seed user who "wrote" it as author, so the update log says who did what.

The people get an e-mail address, a role (a lead per department, one admin) and a random
password, logged once when they are created: only its hash is stored.

Seeding is idempotent: rows that exist are kept, and a document that has content already is
left alone, so restarting with the flag changes nothing (and never undoes a user's edits).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Map
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server import passwords
from server.access import Grant, replace_grants
from server.origin import Origin
from server.persistence import users, workspace
from server.persistence.tables import grants
from server.persistence.users import Role
from server.rooms.registry import Registry
from server.rooms.room import Room
from shared.board import Subtask, add_task
from shared.discussion import post_message
from shared.documents import Kind, initialize
from shared.richtext import set_meta, set_text

log = logging.getLogger("tandem.demo")

CAMPAIGN_FOLDER = "双十一大促 2026"
MARKETING, OPERATIONS, SERVICE = "市场部", "运营部", "客服部"
DEPARTMENTS = (MARKETING, OPERATIONS, SERVICE)
BOARD_ID = "d11-board"


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    department: str
    role: str  # the job title, part of the display name
    email: str
    access: Role = "member"  # what the person may do in Tandem


PEOPLE: tuple[Person, ...] = (
    Person("王晓雯", MARKETING, "市场部经理", "wang.xiaowen@double11.example", "lead"),
    Person("李俊杰", MARKETING, "品牌推广", "li.junjie@double11.example"),
    Person("陈思雨", MARKETING, "视觉设计", "chen.siyu@double11.example"),
    Person("张伟", OPERATIONS, "运营经理", "zhang.wei@double11.example", "lead"),
    Person("刘洋", OPERATIONS, "活动运营", "liu.yang@double11.example"),
    Person("赵敏", OPERATIONS, "商品与库存", "zhao.min@double11.example"),
    Person("孙丽华", SERVICE, "客服主管", "sun.lihua@double11.example", "lead"),
    Person("周婷", SERVICE, "客服培训", "zhou.ting@double11.example"),
    # Runs the customer-service bot, and Tandem with it.
    Person("吴浩", SERVICE, "智能客服", "wu.hao@double11.example", "admin"),
)
LEADS = {MARKETING: "王晓雯", OPERATIONS: "张伟", SERVICE: "孙丽华"}


@dataclass(frozen=True, slots=True)
class DemoTask:
    id: str
    title: str
    department: str
    assignee: str
    status: str
    due: str
    priority: str
    tags: tuple[str, ...]
    subtasks: tuple[tuple[str, bool], ...] = ()
    description: str = ""
    watchers: tuple[str, ...] = ()


TASKS: tuple[DemoTask, ...] = (
    # -- 市场部 --
    DemoTask(
        "campaign-plan", "活动策划方案", MARKETING, "王晓雯", "done", "2026-10-20", "high",
        ("策划", "方案"),
        (("市场调研总结", True), ("竞品活动分析", True), ("方案初稿", True),
         ("管理层评审", True)),
        "整体节奏、优惠机制与各部门分工，见《2026 双十一大促活动策划方案》。",
        ("张伟", "孙丽华"),
    ),
    DemoTask(
        "warmup-page", "预热页面设计", MARKETING, "陈思雨", "in_progress", "2026-10-28",
        "high", ("设计", "预热"),
        (("主视觉 KV", True), ("移动端适配", False), ("埋点需求确认", False)),
        "会场首页、品类分会场与会员预约页，10月28日前上线预热。",
        ("刘洋",),
    ),
    DemoTask(
        "social-warmup", "社交媒体预热推广", MARKETING, "李俊杰", "in_progress", "2026-11-01",
        "high", ("推广", "小红书", "微博"),
        (("达人名单确认", True), ("内容排期表", False), ("投放预算审批", False)),
    ),
    DemoTask(
        "live-schedule", "直播排期", MARKETING, "李俊杰", "todo", "2026-11-05", "urgent",
        ("直播",),
        (("主播档期确认", False), ("直播脚本", False), ("样品寄送", False)),
        "11月5日–11月11日 每晚 20:00 店铺直播，主推款需与运营部核对库存。",
        ("赵敏",),
    ),
    DemoTask(
        "co-brand-poster", "品牌联名海报", MARKETING, "陈思雨", "todo", "2026-11-03",
        "normal", ("设计",),
    ),
    DemoTask(
        "member-push", "会员短信与 Push 触达文案", MARKETING, "王晓雯", "todo", "2026-11-08",
        "normal", ("会员", "文案"),
    ),
    # -- 运营部 --
    DemoTask(
        "presale-deposit", "预售定金玩法配置", OPERATIONS, "刘洋", "done", "2026-10-22",
        "high", ("预售", "系统"),
        (("定金膨胀规则", True), ("尾款时间设置", True)),
    ),
    DemoTask(
        "war-room", "大促作战室值班表", OPERATIONS, "张伟", "done", "2026-10-25", "normal",
        ("排班",),
    ),
    DemoTask(
        "coupons", "优惠券配置", OPERATIONS, "刘洋", "in_progress", "2026-11-02", "urgent",
        ("优惠券", "系统"),
        (("满300减40 规则", True), ("跨店满减叠加测试", False), ("限量券库存设置", False)),
        "按策划方案第三节配置；上线前与客服部同步最终口径。",
        ("王晓雯", "孙丽华"),
    ),
    DemoTask(
        "product-pages", "商品详情页上新", OPERATIONS, "赵敏", "in_progress", "2026-11-06",
        "high", ("商品",),
        (("主推款详情页", True), ("赠品信息", False)),
    ),
    DemoTask(
        "stock-check", "库存核对", OPERATIONS, "赵敏", "todo", "2026-11-04", "urgent",
        ("库存", "仓储"),
        (("爆款 SKU 清单", True), ("与仓库对账", False), ("预售商品备货", False)),
        "低于预估销量 60% 的 SKU 需补货或准备替代款。",
        ("李俊杰", "周婷"),
    ),
    DemoTask(
        "logistics", "物流与仓配预案", OPERATIONS, "张伟", "todo", "2026-11-07", "high",
        ("物流",),
    ),
    DemoTask(
        "price-check", "活动价格巡检", OPERATIONS, "刘洋", "todo", "2026-11-10", "high",
        ("价格", "风控"),
    ),
    # -- 客服部 --
    DemoTask(
        "cs-roster", "客服排班与加班安排", SERVICE, "周婷", "done", "2026-10-26", "normal",
        ("排班",),
    ),
    DemoTask(
        "cs-faq", "客服答疑手册", SERVICE, "孙丽华", "in_progress", "2026-11-03", "high",
        ("FAQ", "培训"),
        (("优惠规则问答", True), ("物流时效问答", False), ("退换货政策", False),
         ("市场部审核口径", False)),
        "见《双十一客服答疑手册 (FAQ)》，优惠口径以运营部配置为准。",
        ("王晓雯", "刘洋"),
    ),
    DemoTask(
        "cs-training", "客服话术培训", SERVICE, "周婷", "todo", "2026-11-06", "normal",
        ("培训",),
    ),
    DemoTask(
        "bot-knowledge", "智能客服机器人知识库更新", SERVICE, "吴浩", "todo", "2026-11-05",
        "high", ("机器人", "FAQ"),
        (("导入答疑手册", False), ("高频问题测试", False)),
    ),
    DemoTask(
        "after-sales", "售后退换货预案", SERVICE, "孙丽华", "todo", "2026-11-09", "normal",
        ("售后",),
    ),
)  # fmt: skip

PLAN = """\
> 版本 v1.2 · 市场部 王晓雯 · 各部门直接在本文中修改与评论，不再通过邮件传附件。

## 一、活动目标

- GMV 目标 **1.2 亿元**，同比增长 25%
- 新增会员 **30 万**，会员复购率不低于 35%
- 客服首次响应时长不超过 30 秒，满意度不低于 96%

## 二、活动节奏

| 阶段 | 时间 | 重点 | 负责部门 |
| --- | --- | --- | --- |
| 预热期 | 10月20日–10月31日 | 种草内容、会员预约、预售定金 | 市场部 |
| 第一波 | 11月1日–11月3日 | 预售尾款、跨店满减 | 运营部 |
| 蓄水期 | 11月4日–11月9日 | 直播加推、限量券 | 市场部 / 运营部 |
| 爆发期 | 11月10日 20:00–11月11日 24:00 | 满300减40、整点秒杀 | 全部门 |
| 返场期 | 11月12日–11月13日 | 返场券、售后保障 | 客服部 |

## 三、优惠机制

1. 跨店满减：每满 300 减 40，可与店铺券叠加
2. 预售定金：定金 50 抵 150，尾款 11月1日 20:00 开始支付
3. 整点秒杀：11月11日 0点、10点、20点 各一场
4. 会员专享：88VIP 在满减后再享 95 折

## 四、各部门分工

- **市场部**：活动策划、预热页面、社交媒体推广、直播排期
- **运营部**：优惠券与价格配置、库存核对、商品上新、物流预案
- **客服部**：答疑手册、话术培训、机器人知识库、售后预案

## 五、风险与预案

- [x] 预售定金规则已与法务确认
- [ ] 爆发期服务器扩容（技术部支持）
- [ ] 爆款断货时的替代商品推荐话术
"""

OPERATIONS_PLAN = """\
> 运营部 张伟 · 依据《2026 双十一大促活动策划方案》执行，进度以任务板为准。

## 会场与商品

- 主会场 + 6 个品类分会场，10月28日预热上线
- 主推款 120 个 SKU，详情页 11月6日前全部更新
- 每日 10:00 巡检活动价格，异常价格 30 分钟内处理

## 优惠券投放

| 券种 | 面额 | 数量 | 渠道 |
| --- | --- | --- | --- |
| 跨店满减 | 满300减40 | 不限 | 全站 |
| 店铺券 | 满199减20 | 50 万张 | 会场领券 |
| 直播专享券 | 满99减15 | 10 万张 | 直播间 |

## 物流保障

1. 与三家快递签订大促运力保障协议
2. 预售商品 11月1日前入仓
3. 爆发期仓库三班倒，现货 48 小时内发货
"""

FAQ = """\
> 客服部维护，市场部审核优惠口径，运营部确认库存与物流。本文更新后所有客服即时可见。

## 优惠规则

### 跨店满减怎么算？

每满 300 元减 40 元，上不封顶，可与店铺优惠券叠加使用。例如订单 620 元，减 80 元。

### 定金可以退吗？

因商家原因（如缺货）无法发货的，定金全额退还；其他情况定金不退，请在下单前提醒顾客。

### 88VIP 折扣和满减能一起用吗？

可以。先计算满减，再在满减后的金额上享受 95 折。

## 物流时效

### 双十一期间多久发货？

现货商品 **48 小时内**发货；预售商品按商品页标注的时间发货。

### 可以指定快递吗？

大促期间不支持指定快递，系统按收货地址自动分配时效最快的快递。

## 售后与退换货

### 买贵了能退差价吗？

11月1日–11月13日 期间，同一商品降价可申请价保，每笔订单限一次。

### 七天无理由退货还适用吗？

适用。定制类与生鲜商品除外，详见商品页说明。

## 常用话术

| 场景 | 推荐话术 |
| --- | --- |
| 咨询优惠 | 亲，现在下单每满300减40哦，还可以叠加店铺券～ |
| 催发货 | 亲，大促期间订单量较大，您的包裹会在 48 小时内发出，请耐心等待 🙏 |
| 缺货 | 非常抱歉，这款暂时售罄，为您推荐同系列的热卖款～ |
"""


@dataclass(frozen=True, slots=True)
class DemoMessage:
    id: str
    author: str
    body: str
    reply_to: str | None = None
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DemoDocument:
    id: str
    kind: Kind
    title: str
    folder: str | None  # a department sub-folder, or None: the campaign folder itself
    department: str | None
    author: str
    tags: tuple[str, ...] = ()
    notes: str | None = None
    text: str | None = None
    subject_task: str | None = None
    messages: tuple[DemoMessage, ...] = field(default_factory=tuple)


DOCUMENTS: tuple[DemoDocument, ...] = (
    DemoDocument(
        BOARD_ID,
        "board",
        "双十一大促任务板",
        None,
        OPERATIONS,
        "张伟",
        tags=("双十一", "任务板"),
        notes="三个部门的全部任务：负责人、截止日期、优先级与进度一目了然。",
    ),
    DemoDocument(
        "d11-plan",
        "doc",
        "2026 双十一大促活动策划方案",
        MARKETING,
        MARKETING,
        "王晓雯",
        tags=("双十一", "策划"),
        notes="市场部主笔，运营部与客服部直接评论。",
        text=PLAN,
    ),
    DemoDocument(
        "d11-ops-plan",
        "doc",
        "双十一运营推广计划",
        OPERATIONS,
        OPERATIONS,
        "张伟",
        tags=("双十一", "推广"),
        text=OPERATIONS_PLAN,
    ),
    DemoDocument(
        "d11-faq",
        "doc",
        "双十一客服答疑手册 (FAQ)",
        SERVICE,
        SERVICE,
        "孙丽华",
        tags=("双十一", "FAQ", "答疑手册"),
        notes="优惠口径变更时，运营部在讨论区通知客服部。",
        text=FAQ,
    ),
    DemoDocument(
        "d11-talk-coupons",
        "discussion",
        "讨论：优惠券配置",
        None,
        OPERATIONS,
        "刘洋",
        tags=("双十一", "优惠券"),
        subject_task="coupons",
        messages=(
            DemoMessage(
                "coupons-1",
                "刘洋",
                "@王晓雯 优惠券已按方案配置满300减40。跨店满减和店铺券能否同时使用，"
                "需要市场部最后确认一下。",
                mentions=("王晓雯",),
            ),
            DemoMessage(
                "coupons-2",
                "王晓雯",
                "可以叠加，方案第三节有写。另外 88VIP 的 95 折是在满减之后计算的。",
                reply_to="coupons-1",
            ),
            DemoMessage(
                "coupons-3",
                "孙丽华",
                "@刘洋 @王晓雯 规则定了请告诉我们，答疑手册里“跨店满减怎么算”要按最终口径改。",
                reply_to="coupons-2",
                mentions=("刘洋", "王晓雯"),
            ),
            DemoMessage(
                "coupons-4",
                "刘洋",
                "已在测试环境验证通过，叠加规则截图放在运营部文件夹，手册可以按这个口径更新。",
                reply_to="coupons-3",
                mentions=("孙丽华",),
            ),
        ),
    ),
    DemoDocument(
        "d11-talk-stock",
        "discussion",
        "讨论：库存核对",
        None,
        OPERATIONS,
        "赵敏",
        tags=("双十一", "库存"),
        subject_task="stock-check",
        messages=(
            DemoMessage(
                "stock-1",
                "赵敏",
                "爆款 SKU 清单初步整理完了，共 126 个 SKU，其中 18 个库存低于预估销量的 60%。"
                "@李俊杰 直播要主推的款能先给我一份吗？",
                mentions=("李俊杰",),
            ),
            DemoMessage(
                "stock-2",
                "李俊杰",
                "11月5日那场主推 12 款，清单今天下班前发你。",
                reply_to="stock-1",
            ),
            DemoMessage(
                "stock-3",
                "周婷",
                "缺货的款请提前告诉客服部，我们准备替代商品的推荐话术。",
                mentions=("赵敏",),
            ),
            DemoMessage(
                "stock-4",
                "张伟",
                "@赵敏 低库存的 18 个 SKU 周三前和仓库对完账，进度直接更新在任务板上。",
                reply_to="stock-1",
                mentions=("赵敏",),
            ),
        ),
    ),
)


# -- workspace rows ------------------------------------------------------------------------------


async def _department(conn: AsyncConnection, name: str) -> int:
    row = await workspace.get_department(conn, name)
    if row is None:
        row = await workspace.create_department(conn, name)
    return int(row.id)


async def _folder(
    conn: AsyncConnection, name: str, parent_id: int | None, department: str | None
) -> int:
    row = await workspace.find_folder(conn, parent_id, name)
    if row is None:
        row = await workspace.create_folder(
            conn, name, parent_id=parent_id, department=department, created_by=LEADS[OPERATIONS]
        )
    return int(row.id)


# Who reads what beyond their own department's folder: customer service and operations
# read marketing's campaign plan; operations' and customer service's folders (the promotion
# plan, the FAQ) are for everyone to read. The board and the discussions, which operations
# owns, are where all three departments work: everyone writes there.
DEMO_GRANTS: dict[str, tuple[Grant, ...]] = {
    MARKETING: (Grant("read", department=SERVICE), Grant("read", department=OPERATIONS)),
    OPERATIONS: (Grant("read", everyone=True),),
    SERVICE: (Grant("read", everyone=True),),
}


DEMO_DOCUMENT_GRANTS: dict[str, tuple[Grant, ...]] = {
    doc_id: (Grant("write", everyone=True),)
    for doc_id in (BOARD_ID, "d11-talk-coupons", "d11-talk-stock")
}


async def _grants(conn: AsyncConnection, folders: dict[str, int]) -> None:
    """The demo's grants, on folders that have none yet (a restart changes nothing)."""
    for name, wanted in DEMO_GRANTS.items():
        held = await conn.execute(select(grants.c.id).where(grants.c.folder_id == folders[name]))
        if held.first() is None:
            await replace_grants(conn, folder_id=folders[name], new=wanted, by=LEADS[OPERATIONS])


async def _rows(engine: AsyncEngine) -> dict[str, str]:
    """Create what is missing; returns the password of each person created now."""
    created: dict[str, str] = {}
    async with engine.begin() as conn:
        departments = {name: await _department(conn, name) for name in DEPARTMENTS}
        for person in PEOPLE:
            if await users.get_user(conn, person.name) is None:
                password = secrets.token_urlsafe(9)
                await users.create_user(
                    conn,
                    person.name,
                    display_name=f"{person.name} · {person.role}",
                    email=person.email,
                    department_id=departments[person.department],
                    role=person.access,
                    password_hash=await passwords.hash_password_async(password),
                )
                created[person.name] = password
        campaign = await _folder(conn, CAMPAIGN_FOLDER, None, None)
        folders = {name: await _folder(conn, name, campaign, name) for name in DEPARTMENTS}
        await _grants(conn, folders)
        for spec in DOCUMENTS:
            if await workspace.document_exists(conn, spec.id):
                continue
            await workspace.create_document(
                conn,
                spec.id,
                kind=spec.kind,
                title=spec.title,
                folder_id=campaign if spec.folder is None else folders[spec.folder],
                department=spec.department,
                tags=spec.tags,
                notes=spec.notes,
                created_by=spec.author,
            )
            shared = DEMO_DOCUMENT_GRANTS.get(spec.id)
            if shared:
                await replace_grants(conn, doc_id=spec.id, new=shared, by=spec.author)
    return created


# -- content -----------------------------------------------------------------------------------


Change = Callable[[Doc[Any]], object]


def _shape(spec: DemoDocument) -> Change:
    def shape(doc: Doc[Any]) -> None:
        initialize(
            doc,
            spec.kind,
            title=spec.title,
            department=spec.department,
            project=CAMPAIGN_FOLDER if spec.kind == "board" else None,
        )
        if spec.kind == "doc":
            set_meta(doc, tags=spec.tags, notes=spec.notes)
        elif spec.kind == "discussion":
            meta = doc.get("meta", type=Map)
            meta["subject_doc"] = BOARD_ID
            meta["subject_task"] = spec.subject_task

    return shape


def _task_change(task: DemoTask) -> Change:
    def add(doc: Doc[Any]) -> None:
        add_task(
            doc,
            task.title,
            status=task.status,
            assignee=task.assignee,
            department=task.department,
            due=task.due,
            priority=task.priority,
            tags=task.tags,
            subtasks=[Subtask("", title, done) for title, done in task.subtasks],
            created_by=LEADS[task.department],
            description=task.description,
            watchers=task.watchers,
            task_id=task.id,
        )

    return add


def _message_change(message: DemoMessage) -> Change:
    def post(doc: Doc[Any]) -> None:
        post_message(
            doc,
            message.author,
            message.body,
            reply_to=message.reply_to,
            mentions=message.mentions,
            message_id=message.id,
        )

    return post


def _edits(spec: DemoDocument) -> Sequence[tuple[str, Change]]:
    """The edits that make up a document's content, each with its author."""
    edits: list[tuple[str, Change]] = [(spec.author, _shape(spec))]
    if spec.kind == "board":
        edits += [(LEADS[task.department], _task_change(task)) for task in TASKS]
    elif spec.kind == "doc" and spec.text is not None:
        text = spec.text
        edits.append((spec.author, lambda doc: set_text(doc, text)))
    for message in spec.messages:
        edits.append((message.author, _message_change(message)))
    return edits


def _announce_passwords(created: dict[str, str]) -> None:
    """Log the demo people's passwords: this once, when they are made (only their hashes
    are stored)."""
    lines = [
        f"  {person.name:<4} {person.email:<32} {person.access:<7} {created[person.name]}"
        for person in PEOPLE
        if person.name in created
    ]
    log.warning(
        "demo: %d people can sign in (POST /api/auth/login with TANDEM_SECRET set) with these "
        "passwords, shown only now:\n%s",
        len(lines),
        "\n".join(lines),
    )


def _is_empty(room: Room) -> bool:
    return room.doc.get_state() == b"\x00"


async def seed(engine: AsyncEngine, registry: Registry) -> list[str]:
    """Seed the example workspace; returns the ids of the documents written (none: it was
    there already)."""
    created = await _rows(engine)
    if created:
        _announce_passwords(created)
    written: list[str] = []
    for spec in DOCUMENTS:
        async with registry.use(spec.id) as room:
            if not _is_empty(room):
                continue
            for author, change in _edits(spec):
                room.edit(Origin("rest", author), change)
            written.append(spec.id)
    for doc_id in written:
        await registry.writer.flush(doc_id, timeout=30.0)
    if written:
        log.info(
            "demo: seeded %d documents in folder %s (%s)",
            len(written),
            CAMPAIGN_FOLDER,
            ", ".join(written),
        )
    else:
        log.info("demo: the example workspace is there already; nothing changed")
    return written
