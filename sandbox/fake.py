"""Deterministic, believable UK company and product data for the simulators' seeds.

Both simulators seed from here so that a Salesforce Account and a KashFlow customer can share a
name. Generation is sequential from one `random.Random(seed)`, so `companies(50, s)` is exactly the
first 50 of `companies(200, s)`: the Salesforce demo takes a prefix of the KashFlow list and the
names line up.

Phone numbers come from Ofcom's ranges reserved for drama (020 7946 0xxx, 07700 900xxx, ...), so
no generated number rings a real person. No Faker: a stdlib generator is fast enough for 10,000+
records and cannot change under us with a dependency upgrade.
"""

import random
import re
from decimal import Decimal

# (city, county, Ofcom drama area prefix, outward postcode area, highest district number)
UK_TOWNS = [
    ("London", "Greater London", "020 7946 0", "EC", 4),
    ("London", "Greater London", "020 7946 0", "SE", 28),
    ("London", "Greater London", "020 7946 0", "N", 22),
    ("Leeds", "West Yorkshire", "0113 496 0", "LS", 28),
    ("Bradford", "West Yorkshire", "0113 496 0", "BD", 24),
    ("Sheffield", "South Yorkshire", "0114 496 0", "S", 36),
    ("Bristol", "Bristol", "0117 496 0", "BS", 41),
    ("Birmingham", "West Midlands", "0121 496 0", "B", 48),
    ("Coventry", "West Midlands", "0121 496 0", "CV", 12),
    ("Edinburgh", "Midlothian", "0131 496 0", "EH", 17),
    ("Glasgow", "Lanarkshire", "0141 496 0", "G", 46),
    ("Liverpool", "Merseyside", "0151 496 0", "L", 38),
    ("Manchester", "Greater Manchester", "0161 496 0", "M", 40),
    ("Stockport", "Cheshire", "0161 496 0", "SK", 17),
    ("Newcastle upon Tyne", "Tyne and Wear", "0191 498 0", "NE", 15),
    ("Nottingham", "Nottinghamshire", "0115 496 0", "NG", 25),
    ("Leicester", "Leicestershire", "0116 496 0", "LE", 19),
    ("Reading", "Berkshire", "0118 496 0", "RG", 42),
    ("Cambridge", "Cambridgeshire", "01632 960 ", "CB", 25),
    ("Norwich", "Norfolk", "01632 960 ", "NR", 35),
    ("Exeter", "Devon", "01632 960 ", "EX", 39),
    ("Cardiff", "South Glamorgan", "029 2018 0", "CF", 48),
    ("Harrogate", "North Yorkshire", "01632 960 ", "HG", 5),
    ("York", "North Yorkshire", "01632 960 ", "YO", 62),
    ("Oxford", "Oxfordshire", "01632 960 ", "OX", 44),
    ("Bath", "Somerset", "0117 496 0", "BA", 16),
    ("Truro", "Cornwall", "01632 960 ", "TR", 27),
    ("Carlisle", "Cumbria", "01632 960 ", "CA", 28),
]

# Abroad: a few customers for VAT-by-country cases. (city, county/region, phone prefix, postcodes)
ABROAD = {
    "IE": [("Dublin", "County Dublin", "+353 1 555 0", ["D02 X285", "D04 K7W2", "D08 VF8H"])],
    "FR": [("Paris", "Ile-de-France", "+33 1 99 00 ", ["75008", "75011", "75015"])],
    "US": [("Boston", "MA", "+1 617 555 0", ["02108", "02116", "02134"])],
    "DE": [("Berlin", "Berlin", "+49 30 555 0", ["10115", "10827", "12043"])],
}
ABROAD_SHARE = 0.06

FIRST_NAMES = (  # noqa: SIM905 (a word list reads better as text)
    "Oliver George Harry Jack Jacob Noah Charlie Muhammad Thomas Oscar William James Leo "
    "Alfie Henry Joshua Freddie Archie Ethan Isaac Alexander Joseph Edward Samuel Max Daniel "
    "Arthur Lucas Mohammed Logan Amelia Olivia Isla Emily Poppy Ava Isabella Jessica Lily "
    "Sophie Grace Sophia Mia Evie Ruby Ella Scarlett Isabelle Chloe Sienna Freya Phoebe "
    "Charlotte Daisy Alice Florence Eva Sofia Millie Lucy Priya Aisha Sian Rhys Callum Fiona "
    "Morag Niamh Aoife Declan"
).split()
LAST_NAMES = (  # noqa: SIM905 (a word list reads better as text)
    "Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson "
    "Thompson Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke Patel Jackson "
    "Wood Turner Martin Cooper Hill Ward Morris Moore Clark Lee King Baker Harrison Morgan "
    "Allen James Scott Phillips Watson Davis Parker Price Bennett Young Griffiths Mitchell "
    "Kelly Cook Carter Richardson Bailey Collins Bell Shaw Murphy Miller Cox Richards Khan "
    "Marshall Anderson Simpson Ellis Adams Singh Begum Wilkinson Foster Chapman Powell Webb "
    "Rogers Gray Mason Ali Hunt Hussain Campbell Matthews Owen Palmer Holmes Mills Barnes "
    "Knight Lloyd Butler Russell Barker Fisher Stevens Jenkins Murray Dixon Harvey Hargreaves "
    "Pennington Ashworth Fairbairn"
).split()
# Words that open a trading name: places, landscape, heraldry. Combined with a trade below.
NAME_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "Pennine Cotswold Mendip Chiltern Malvern Quantock Severn Thames Mersey Tyne Humber "
    "Wessex Mercia Northumbria Cheviot Dales Moorland Fenland Broadland Heathfield Oakwood "
    "Ashdown Beacon Harbour Riverside Millstone Foundry Anvil Lantern Kestrel Heron Falcon "
    "Osprey Badger Otter Bluebell Thistle Heather Acorn Rowan Hawthorn Willow Juniper "
    "Sterling Crown Regent Albion Britannia Saxon Viking Norman Tudor Stuart Windsor Castle "
    "Abbey Priory Minster Quay Wharf Granary Maltings Brewery Tannery Forge Kiln Loom Spindle "
    "Compass Meridian Summit Keystone Cornerstone Bridgewater Longbridge Highgate Northgate "
    "Eastgate Southbank Westfield Brightwater Clearwater Silverdale Greenfield Redbrick "
    "Blackstone Whitecliff Goldcrest"
).split()
TRADES = (  # noqa: SIM905 (a word list reads better as text)
    "Joinery|Engineering|Plumbing & Heating|Electrical|Building Services|Roofing|Landscapes|"
    "Logistics|Haulage|Couriers|Catering|Bakery|Brewing|Distillers|Coffee Roasters|"
    "Print & Design|Signs|Marketing|Digital|Software|IT Services|Consulting|Recruitment|"
    "Accountancy|Legal Services|Property|Lettings|Estates|Interiors|Furniture|Textiles|"
    "Fabrications|Precision Tooling|Plastics|Packaging|Laboratories|Pharmacy|Dental Care|"
    "Veterinary Practice|Garden Centre|Motors|Tyres|Cycles|Outdoor|Travel|Events|Media|"
    "Security|Cleaning Services|Facilities|Scaffolding|Glazing|Kitchens|Flooring|Tiling"
).split("|")
LEGAL_FORMS = ["Ltd", "Ltd", "Ltd", "Limited", "LLP", "plc", "& Co Ltd"]
STREETS = (  # noqa: SIM905 (a word list reads better as text)
    "High Street|Station Road|Church Street|Mill Lane|Victoria Road|Park Road|London Road|"
    "Queen Street|King Street|Market Place|Bridge Street|North Road|Green Lane|Manor Road|"
    "Albert Road|The Parade|New Road|Chapel Street|Castle Street|Water Lane|Canal Side|"
    "Wellington Street|York Road|Commercial Street|Foundry Lane"
).split("|")
BUSINESS_PARKS = (  # noqa: SIM905 (a word list reads better as text)
    "Riverside Business Park|Enterprise House|Innovation Centre|Clarence Court|"
    "Kingsway Industrial Estate|The Old Mill|Meridian Works|Parkway Trading Estate|"
    "Waterside House"
).split("|")
FLOORS = ["Ground Floor", "First Floor", "Second Floor", "Suite 2", "Suite 5", "The Annexe"]
# Letters allowed in the inward code of a UK postcode (never C, I, K, M, O, V).
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


def companies(n: int, seed: str = "demo") -> list[dict]:
    """n distinct companies; the first k for any k <= n are the same whatever n is."""
    rng = random.Random(f"companies:{seed}")
    names: set[str] = set()
    code_counts: dict[str, int] = {}
    result = []
    for _ in range(n):
        name = _unique_company_name(rng, names)
        code = _customer_code(name, code_counts)
        result.append(_company(rng, name, code))
    return result


def _unique_company_name(rng: random.Random, taken: set[str]) -> str:
    for _ in range(8):
        name = _company_name(rng)
        if name not in taken:
            taken.add(name)
            return name
    # The combinations run short only far past demo sizes; a branch town keeps names believable.
    base = re.sub(r" (Ltd|Limited|LLP|plc|& Co Ltd)$", "", name)
    town, branch = rng.choice(UK_TOWNS)[0], 1
    name = f"{base} ({town}) Ltd"
    while name in taken:
        branch += 1
        name = f"{base} ({town} {branch}) Ltd"
    taken.add(name)
    return name


def _company_name(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.55:
        return f"{rng.choice(NAME_WORDS)} {rng.choice(TRADES)} {rng.choice(LEGAL_FORMS)}"
    if style < 0.8:
        return f"{rng.choice(LAST_NAMES)} {rng.choice(TRADES)} {rng.choice(LEGAL_FORMS)}"
    if style < 0.92:
        return f"{rng.choice(LAST_NAMES)} & {rng.choice(LAST_NAMES)} {rng.choice(LEGAL_FORMS)}"
    return f"{rng.choice(LAST_NAMES)} & Sons {rng.choice(['Ltd', 'Limited'])}"


def _customer_code(name: str, counts: dict[str, int]) -> str:
    """KashFlow-style code: up to five letters of the name and a running number, e.g. PENNI001."""
    letters = re.sub(r"[^A-Z]", "", name.upper())[:5]
    counts[letters] = counts.get(letters, 0) + 1
    return f"{letters}{counts[letters]:03d}"


def _company(rng: random.Random, name: str, code: str) -> dict:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    if rng.random() < ABROAD_SHARE:
        country = rng.choice(sorted(ABROAD))
        city, county, phone_prefix, postcodes = rng.choice(ABROAD[country])
        postcode = rng.choice(postcodes)
    else:
        country = "GB"
        city, county, phone_prefix, area, districts = rng.choice(UK_TOWNS)
        postcode = _uk_postcode(rng, area, districts)
    return {
        "code": code,
        "name": name,
        "contact_first": first,
        "contact_last": last,
        "email": f"{first.lower()}.{last.lower()}@{_domain(name)}",
        "phone": f"{phone_prefix}{rng.randrange(1000):03d}",
        "street": _street_lines(rng),
        "city": city,
        "county": county,
        "postcode": postcode,
        "country_code": country,
    }


def _uk_postcode(rng: random.Random, area: str, districts: int) -> str:
    inward = rng.choice(INWARD_LETTERS) + rng.choice(INWARD_LETTERS)
    return f"{area}{rng.randint(1, districts)} {rng.randint(0, 9)}{inward}"


def _street_lines(rng: random.Random) -> list[str]:
    lines = []
    if rng.random() < 0.15:
        lines.append(rng.choice(FLOORS))
    if rng.random() < 0.35:
        lines.append(f"Unit {rng.randint(1, 40)}, {rng.choice(BUSINESS_PARKS)}")
    lines.append(f"{rng.randint(1, 240)} {rng.choice(STREETS)}")
    return lines


def _domain(name: str) -> str:
    words = re.sub(r"\b(Ltd|Limited|LLP|plc|Co)\b|[^A-Za-z ]", " ", name).lower().split()
    return "-".join(words[:3]) + ".co.uk"


# (family, UK VAT rate, sales nominal, product name stems, (low, high) price in pounds)
PRODUCT_FAMILIES = [
    (
        "Consulting",
        "20",
        4000,
        ["Strategy Workshop", "Process Review", "Day Rate", "Audit"],
        (450, 1800),
    ),
    ("Software", "20", 4010, ["Licence", "Subscription", "Add-on Module", "User Seat"], (12, 950)),
    ("Hardware", "20", 4020, ["Router", "Barcode Scanner", "Label Printer", "Tablet"], (40, 1200)),
    ("Support", "20", 4030, ["Support Plan", "Priority Support", "Maintenance"], (60, 600)),
    ("Training", "20", 4040, ["Training Course", "E-learning Seat", "Onsite Training"], (95, 1500)),
    ("Books", "0", 4050, ["Handbook", "Field Guide", "Reference Manual"], (8, 65)),
    ("Energy", "5", 4060, ["Domestic Fuel", "Heating Oil", "Solar Panel Install"], (80, 2400)),
    ("Child Safety", "5", 4060, ["Car Seat", "Booster Seat"], (45, 260)),
]
PRODUCT_GRADES = ["Standard", "Professional", "Premium", "Essentials", "Plus", "Enterprise", "Lite"]


def products(n: int, seed: str = "demo") -> list[dict]:
    """n distinct products spread over several sales nominals, with UK VAT rates 20, 5 and 0."""
    rng = random.Random(f"products:{seed}")
    result = []
    for number in range(1, n + 1):
        family, vat, nominal, stems, (low, high) = rng.choice(PRODUCT_FAMILIES)
        stem, grade = rng.choice(stems), rng.choice(PRODUCT_GRADES)
        pence = rng.randint(low * 100, high * 100)
        result.append(
            {
                "code": f"{family[:3].upper()}-{number:04d}",
                "name": f"{grade} {stem}",
                "description": f"{family}: {stem.lower()}, {grade.lower()} edition",
                "price": Decimal(pence).scaleb(-2),
                "vat_rate": Decimal(vat),
                "nominal_code": nominal,
                "family": family,
            }
        )
    return result
