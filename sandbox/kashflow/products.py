"""Products, keyed by (NominalCode, Code): the same code may exist under two nominals (§4.5).

The spec caps product pages at 100 records and defaults to 10.

PUT replaces the whole product, as KashFlow's PUTs are reported to ("a full replacement, not a
partial update", hcs-app's notes from live use): a field left out is cleared (Description to
"", Price, VATRate and the other numbers to 0, the flags and InUse to false), and a body without
a Name is refused. Code and NominalCode left out mean the path's (no rename).
"""

import json
from decimal import Decimal

from . import lookups
from .listing import envelope, flag, order_of, page_of, sort_column
from .store import Txn
from .wire import Fields, invalid, loads, not_found

MONEY_FIELDS = ["Price", "WholeSalePrice", "VATRate", "QuantityInStock", "StockWarningQuantity"]
FLAG_FIELDS = ["AutoFillLineItem", "ManageStockLevel", "IsDefault"]
SORT_COLUMNS = {
    "code": "p.code", "productcode": "p.code", "0": "p.code",
    "name": "p.name", "productname": "p.name", "1": "p.name",
    "nominalcode": "p.nominal_code", "2": "p.nominal_code",
}  # fmt: skip
SELECT = (
    "SELECT p.*, n.id AS nominal_id"
    " FROM products AS p JOIN nominals AS n ON n.code = p.nominal_code"
)


def product_json(row) -> dict:
    doc = json.loads(row["doc"])
    return {
        "Id": row["id"],
        "Code": row["code"],
        "NominalCode": row["nominal_code"],
        "NominalId": row["nominal_id"],
        "Name": row["name"],
        "Description": doc["Description"],
        **{name: doc[name] for name in FLAG_FIELDS},
        **{name: Decimal(doc[name]) for name in MONEY_FIELDS},
        "InUse": bool(row["in_use"]),
        "PurchaseNominalId": 0,
        "PurchaseSubNominalId": 0,
    }


def find(txn: Txn, nominal_code: str, code: str):
    row = None
    if nominal_code.isdigit():
        row = txn.one(SELECT + " WHERE p.nominal_code = ? AND p.code = ?", (nominal_code, code))
    if row is None:
        raise not_found(f"Product {code} not found under nominal {nominal_code}.")
    return row


def get_product(txn: Txn, request, nominal_code: str, code: str) -> dict:
    return product_json(find(txn, nominal_code, code))


def list_products(txn: Txn, request) -> dict:
    """GET /products: every product, paged."""
    return _paged(txn, request, "1 = 1", {}, sort_column(request, SORT_COLUMNS, "code"))


def list_all_products(txn: Txn, request) -> dict:
    """GET /products/list: `sortcolumn`, `filterbycharacter` and `filterbyinuseonly`."""
    clauses, params = ["1 = 1"], {}
    if first := request.param("filterbycharacter"):
        clauses.append("p.name LIKE :first")
        params["first"] = first[:1] + "%"
    if flag(request, "filterbyinuseonly", default=True):
        clauses.append("p.in_use = 1")
    column = sort_column(request, SORT_COLUMNS, "code", name="sortcolumn")
    return _paged(txn, request, " AND ".join(clauses), params, column)


def list_nominal_products(txn: Txn, request, nominal_code: str) -> dict:
    lookups.get_nominal(txn, request, nominal_code)  # 404 for an unknown nominal
    column = sort_column(request, SORT_COLUMNS, "code")
    return _paged(txn, request, "p.nominal_code = :nominal", {"nominal": nominal_code}, column)


def _paged(txn: Txn, request, where: str, params: dict, column: str) -> dict:
    page = page_of(request, default_size=10, max_size=100)
    order = order_of(request)
    total = txn.one(f"SELECT COUNT(*) AS n FROM products AS p WHERE {where}", params)["n"]
    rows = txn.all(
        f"{SELECT} WHERE {where} ORDER BY {column} {order}, p.id {order}"
        " LIMIT :limit OFFSET :offset",
        {**params, "limit": page.size, "offset": page.offset},
    )
    return envelope(request, txn.base_url, page, total, [product_json(row) for row in rows])


def create_product(txn: Txn, request) -> tuple[int, dict]:
    fields = Fields(loads(request.body))
    code, nominal_code = fields.text("Code").strip(), fields.integer("NominalCode")
    if not code:
        raise invalid("Code is required.")
    if not nominal_code:
        raise invalid("NominalCode is required.")
    _check_free(txn, nominal_code, code)
    name = fields.text("Name").strip() or code
    doc = _apply(fields, _blank_doc())
    txn.run(
        "INSERT INTO products (nominal_code, code, name, in_use, doc) VALUES (?, ?, ?, ?, ?)",
        (nominal_code, code, name, fields.flag("InUse", True), json.dumps(doc)),
    )
    return 201, product_json(find(txn, str(nominal_code), code))


def update_product(txn: Txn, request, nominal_code: str, code: str) -> tuple[int, dict]:
    row = find(txn, nominal_code, code)
    fields = Fields(loads(request.body))
    new_code = fields.text("Code", row["code"]).strip() or row["code"]
    new_nominal = fields.integer("NominalCode", row["nominal_code"])
    moved = (new_nominal, new_code.lower()) != (row["nominal_code"], row["code"].lower())
    if moved:
        _check_free(txn, new_nominal, new_code)
    name = fields.text("Name").strip()
    if not name:
        raise invalid("Name is required.")
    doc = _apply(fields, _blank_doc())  # the whole product: what is left out is cleared
    txn.run(
        "UPDATE products SET nominal_code = ?, code = ?, name = ?, in_use = ?, doc = ?"
        " WHERE id = ?",
        (new_nominal, new_code, name, fields.flag("InUse"), json.dumps(doc), row["id"]),
    )
    return (201 if moved else 200), product_json(find(txn, str(new_nominal), new_code))


def delete_product(txn: Txn, request, nominal_code: str, code: str) -> tuple[int, None]:
    txn.run("DELETE FROM products WHERE id = ?", (find(txn, nominal_code, code)["id"],))
    return 204, None


def _check_free(txn: Txn, nominal_code: int, code: str) -> None:
    lookups.sales_nominal(txn, nominal_code, "NominalCode")
    if txn.one("SELECT 1 FROM products WHERE nominal_code = ? AND code = ?", (nominal_code, code)):
        raise invalid(f"Product code {code} already exists under nominal {nominal_code}.")


def _blank_doc() -> dict:
    return (
        {"Description": ""} | dict.fromkeys(FLAG_FIELDS, False) | dict.fromkeys(MONEY_FIELDS, "0")
    )


def _apply(fields: Fields, doc: dict) -> dict:
    doc = dict(doc)
    if fields.has("Description"):
        doc["Description"] = fields.text("Description")
    for name in FLAG_FIELDS:
        if fields.has(name):
            doc[name] = fields.flag(name)
    for name in MONEY_FIELDS:
        if fields.has(name):
            doc[name] = str(fields.money(name))
    if Decimal(doc["Price"]) < 0:
        raise invalid("Price must not be negative.")
    return doc
