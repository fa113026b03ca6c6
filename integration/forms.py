"""Forms. Secret fields are write-only: they never render a stored value back."""

import json
import re

from django import forms
from django.db.models import Q

from integration.models import (
    AuditEntry,
    Connection,
    FinanceSettings,
    Flow,
    SyncEvent,
    SyncRun,
    Transform,
    Trigger,
)

# A guessable secret would make the webhook address guessable (token_urlsafe(24) is 32 chars).
OUTBOUND_SECRET_MIN_LENGTH = 24

SECRET_LABELS = {
    "password": "Password",
    "security_token": "Security token",
    "consumer_secret": "Consumer secret",
    "private_key": "Private key (PEM)",
    "memorable_word": "Memorable word",
    "outbound_secret": "Outbound Message secret (part of the webhook address)",
}


# JWT bearer is Salesforce's recommended server-to-server sign-in. Password sign-in is SOAP
# login(): off by default in orgs created from Winter '26, unavailable from API version 65.0
# and retired in Summer '27.
AUTH_METHOD_LABELS = {
    Connection.AuthMethod.SF_JWT: (
        "Salesforce: JWT bearer (recommended; connected app + certificate)"
    ),
    Connection.AuthMethod.SF_PASSWORD: (
        "Salesforce: username, password and security token (legacy; being retired by Salesforce)"
    ),
}
AUTH_METHOD_HELP = (
    "For Salesforce choose JWT bearer. Password sign-in is legacy: new Salesforce orgs have it "
    "switched off, it does not work from API version 65.0, and Salesforce retires it in "
    "Summer '27."
)


def _secret_field(name: str, label: str) -> forms.CharField:
    widget = (
        forms.Textarea(attrs={"rows": 4, "autocomplete": "off"})
        if name == "private_key"
        else forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
    )
    return forms.CharField(label=label, required=False, strip=name != "private_key", widget=widget)


# Where a connection sends its secrets and session token. Changing one of these with the
# stored secrets kept would send them to the new host (issue #15): the form asks for them again.
ENDPOINT_FIELDS = ("kind", "base_url", "login_url", "instance_url", "ca_file")


class ConnectionForm(forms.ModelForm):
    """Edit a connection. Leave a secret blank to keep the stored one; tick Clear to remove it.

    Changing where it points (an endpoint field) needs its sign-in secrets typed again in the
    same submit, so that whoever redirects a connection must already know what it sends."""

    # Declared on the class (not added in __init__) so that the admin's form factory knows them.
    password = _secret_field("password", SECRET_LABELS["password"])
    security_token = _secret_field("security_token", SECRET_LABELS["security_token"])
    consumer_secret = _secret_field("consumer_secret", SECRET_LABELS["consumer_secret"])
    private_key = _secret_field("private_key", SECRET_LABELS["private_key"])
    memorable_word = _secret_field("memorable_word", SECRET_LABELS["memorable_word"])
    outbound_secret = _secret_field("outbound_secret", SECRET_LABELS["outbound_secret"])
    clear_password = forms.BooleanField(required=False, label="Clear the stored password")
    clear_security_token = forms.BooleanField(required=False, label="Clear the stored token")
    clear_consumer_secret = forms.BooleanField(required=False, label="Clear the stored secret")
    clear_private_key = forms.BooleanField(required=False, label="Clear the stored private key")
    clear_memorable_word = forms.BooleanField(required=False, label="Clear the memorable word")
    clear_outbound_secret = forms.BooleanField(required=False, label="Clear the Outbound secret")

    class Meta:
        model = Connection
        fields = [
            "name",
            "kind",
            "environment",
            "auth_method",
            "login_url",
            "instance_url",
            "api_version",
            "organization_id",
            "base_url",
            "ca_file",
            "username",
            "consumer_key",
            "realtime",
            "pubsub_endpoint",
            "invoice_from",
            "is_active",
        ]
        labels = {
            "login_url": "Login URL",
            "instance_url": "Instance URL",
            "base_url": "Base URL",
            "ca_file": "CA file",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.get_secrets() if self.instance.pk else {}
        for name in SECRET_LABELS:
            self.fields[name].help_text = (
                "Stored. Leave blank to keep it." if stored.get(name) else "Not set."
            )
        method = self.fields.get("auth_method")
        if method is None:  # the console's read-only view of a connection has no such field
            return
        method.choices = [
            (value, AUTH_METHOD_LABELS.get(value, label)) for value, label in method.choices
        ]
        method.help_text = AUTH_METHOD_HELP

    def clean_realtime(self):
        return self.cleaned_data.get("realtime") or Connection.Realtime.OUTBOUND

    def clean(self):
        cleaned = super().clean()
        kind, method = cleaned.get("kind"), cleaned.get("auth_method") or ""
        if kind and method and not method.startswith("sf_" if kind == "salesforce" else "kf_"):
            self.add_error("auth_method", "This sign-in method is for the other kind of system.")
        if kind == Connection.Kind.KASHFLOW and not cleaned.get("base_url"):
            self.add_error(
                "base_url", "KashFlow needs its API address, e.g. https://api.kashflow.com/v2"
            )
        if kind == Connection.Kind.SALESFORCE and not cleaned.get("login_url"):
            self.add_error(
                "login_url", "Salesforce needs a login address, e.g. https://login.salesforce.com"
            )
        self._clean_outbound(kind, cleaned)
        self._clean_endpoint_change(cleaned)
        return cleaned

    def endpoint_changes(self) -> list[str]:
        return [name for name in ENDPOINT_FIELDS if name in self.changed_data]

    def _clean_endpoint_change(self, cleaned: dict) -> None:
        moved = self.endpoint_changes()
        if not self.instance.pk or not moved:
            return
        needed = Connection.SECRET_FIELDS.get(cleaned.get("auth_method"), ())
        missing = [name for name in needed if not cleaned.get(name)]
        if not missing:
            return
        labels = " and ".join(SECRET_LABELS[name].lower() for name in needed)
        where = ", ".join(str(self.fields[name].label) for name in moved)
        for name in missing:
            self.add_error(
                name,
                f"You changed where this connection sends its sign-in ({where}): enter the "
                f"{labels} again, so that they go only where you mean them to.",
            )

    def _clean_outbound(self, kind: str, cleaned: dict) -> None:
        """The Outbound secret is all that stands between the internet and the webhook, with
        the org id: it must be long enough not to be guessed, and the org id must be known."""
        new_secret = cleaned.get("outbound_secret") or ""
        if new_secret and len(new_secret) < OUTBOUND_SECRET_MIN_LENGTH:
            self.add_error(
                "outbound_secret",
                f"Use at least {OUTBOUND_SECRET_MIN_LENGTH} random characters; this secret is "
                "what keeps strangers off the webhook address.",
            )
        keeps_secret = self.instance.pk and self.instance.has_secret("outbound_secret")
        will_have_secret = new_secret or (keeps_secret and not cleaned.get("clear_outbound_secret"))
        if (
            kind == Connection.Kind.SALESFORCE
            and will_have_secret
            and not cleaned.get("organization_id")
        ):
            self.add_error(
                "organization_id",
                "Outbound Messages are only accepted from a known org: enter its id "
                "(Setup → Company Information → Salesforce.com Organization ID).",
            )

    def describe_changes(self) -> str:
        """What this form changes, for the audit trail: field names, and for secrets only
        whether each was replaced or cleared, never a value."""
        fields = [
            str(self.fields[name].label) for name in self.changed_data if name in self.Meta.fields
        ]
        # Where it points is no secret, and a reviewer needs both ends of the change.
        moves = [
            f"{self.fields[name].label}: {self.initial.get(name) or '(empty)'} → "
            f"{self.cleaned_data.get(name) or '(empty)'}"
            for name in self.endpoint_changes()
        ]
        replaced = [SECRET_LABELS[n] for n in SECRET_LABELS if self.cleaned_data.get(n)]
        cleared = [SECRET_LABELS[n] for n in SECRET_LABELS if self.cleaned_data.get(f"clear_{n}")]
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("Changed", fields),
                ("Secrets replaced", replaced),
                ("Secrets cleared", cleared),
            )
            if names
        ] + moves
        return ". ".join(parts) + "." if parts else "Nothing changed."

    def audit(self, user, created: bool) -> None:
        """Record who saved this connection (the dashboard's view and the admin both call it)."""
        action = (
            AuditEntry.Action.CONNECTION_ADDED if created else AuditEntry.Action.CONNECTION_CHANGED
        )
        AuditEntry.record(
            user,
            action,
            AuditEntry.ObjectType.CONNECTION,
            self.instance.pk,
            str(self.instance),
            self.describe_changes(),
        )

    def _changes_sign_in(self) -> bool:
        """Whether this save changes what a sign-in sends (after a refusal, it may be tried)."""
        sign_in_fields = {"username", "auth_method", "consumer_key", "base_url", "login_url"}
        return bool(sign_in_fields & set(self.changed_data)) or any(
            self.cleaned_data.get(name) for name in SECRET_LABELS if name != "outbound_secret"
        )

    def save(self, commit=True):
        connection = super().save(commit=False)
        for name in SECRET_LABELS:
            if self.cleaned_data.get(f"clear_{name}"):
                connection.clear_secret(name)
        connection.set_secrets(**{name: self.cleaned_data.get(name) for name in SECRET_LABELS})
        if self.instance.pk and self.endpoint_changes():
            # The session was issued by the old host; it is not sent to the new one.
            connection.encrypted_session, connection.session_obtained_at = "", None
        if connection.sign_in_refused_at and self._changes_sign_in():
            connection.clear_sign_in_refusal(save=False)  # new credentials may be tried
        if commit:
            connection.save()
        return connection


# What each kind of connection is asked for on the dashboard's page (the console shows all).
KIND_FIELDS = {
    Connection.Kind.SALESFORCE: (
        *("name", "kind", "environment", "auth_method", "login_url", "instance_url"),
        *("api_version", "organization_id", "ca_file", "username", "consumer_key", "is_active"),
        *("password", "security_token", "consumer_secret", "private_key", "outbound_secret"),
    ),
    Connection.Kind.KASHFLOW: (
        *("name", "kind", "environment", "auth_method", "base_url", "username", "is_active"),
        *("password", "memorable_word"),
    ),
}
KIND_LABELS = {
    "name": ("Name", "How kashforce's pages call it, e.g. “Salesforce live”."),
    "environment": ("Environment", ""),
    "auth_method": ("Sign-in method", ""),
    "login_url": ("Login URL", "https://login.salesforce.com, or your My Domain address."),
    "instance_url": ("Instance URL", "Filled in at sign-in; leave blank."),
    "api_version": ("API version", "e.g. 62.0"),
    "organization_id": ("Organisation id", "Setup → Company Information: 15 or 18 characters."),
    "ca_file": ("CA file", "Only for a test server with a certificate of its own."),
    "consumer_key": ("Consumer key", "From the connected app (JWT and client credentials)."),
    "is_active": ("In use", "kashforce syncs through the connection in use of each kind."),
    "base_url": ("Base URL", "KashFlow's API address: https://api.kashflow.com/v2"),
}


class KindConnectionForm(ConnectionForm):
    """The dashboard's connection page: only the fields of one kind of system, with labels a
    person knows. The kind is fixed on the page (a new connection's comes from ?kind=)."""

    def __init__(self, *args, kind: str, **kwargs):
        super().__init__(*args, **kwargs)
        keep = KIND_FIELDS[kind]
        for name in list(self.fields):
            base = name.removeprefix("clear_")
            if base not in keep:
                del self.fields[name]
        for name, (label, help_text) in KIND_LABELS.items():
            if name in self.fields:
                self.fields[name].label = label
                if help_text:
                    self.fields[name].help_text = help_text
        self.fields["kind"].widget = forms.HiddenInput()
        self.fields["kind"].initial = kind
        prefix = "sf_" if kind == Connection.Kind.SALESFORCE else "kf_"
        self.fields["auth_method"].choices = [
            (value, label)
            for value, label in self.fields["auth_method"].choices
            if value.startswith(prefix)
        ]


# --------------------------------------------------------------------------------------------
# The dashboard's filters and actions


class DateInput(forms.DateInput):
    """A text box for a UK date (dd/mm/yyyy), not the browser's date input, whose format follows
    the browser's locale (mm/dd/yyyy in an en-US browser) rather than the user's country."""

    input_type = "text"

    def __init__(self, attrs=None):
        attrs = {"placeholder": "dd/mm/yyyy", "inputmode": "numeric", "size": 10, **(attrs or {})}
        super().__init__(attrs, format="%d/%m/%Y")


class UKDateField(forms.DateField):
    widget = DateInput
    # dd/mm/yyyy (and d/m/yy, 3-12-2026, 3.12.2026); ISO too, for addresses saved before.
    input_formats = ["%d/%m/%Y", "%d/%m/%y", "%d-%m-%Y", "%d.%m.%Y", "%Y-%m-%d"]
    default_error_messages = {
        "invalid": "Write the date as day/month/year, for example 03/12/2026.",
    }


class RunFilterForm(forms.Form):
    flow = forms.ChoiceField(label="Flow", required=False)
    status = forms.ChoiceField(label="Status", required=False)
    trigger = forms.ChoiceField(label="Started by", required=False)
    date_from = UKDateField(label="From", required=False)
    date_to = UKDateField(label="To", required=False)
    idle = forms.BooleanField(label="Show idle runs", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["flow"].choices = [("", "All flows"), *Flow.choices]
        self.fields["status"].choices = [("", "Any status"), *SyncRun.Status.choices]
        self.fields["trigger"].choices = [("", "Anything"), *Trigger.choices]

    def apply(self, runs):
        """The runs asked for; scheduled runs that read nothing only with "Show idle runs"."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        if not data.get("idle"):
            runs = runs.filter(idle=False)
        for key in ("flow", "status", "trigger"):
            if data.get(key):
                runs = runs.filter(**{key: data[key]})
        if data.get("date_from"):
            runs = runs.filter(created_at__date__gte=data["date_from"])
        if data.get("date_to"):
            runs = runs.filter(created_at__date__lte=data["date_to"])
        return runs


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(label="What", required=False)
    object_type = forms.ChoiceField(label="On", required=False)
    username = forms.CharField(label="Who", required=False, max_length=150)
    q = forms.CharField(label="Name or id", required=False, max_length=200)
    date_from = UKDateField(label="From", required=False)
    date_to = UKDateField(label="To", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "Anything"), *AuditEntry.Action.choices]
        self.fields["object_type"].choices = [("", "Anything"), *AuditEntry.ObjectType.choices]

    def apply(self, entries):
        data = self.cleaned_data
        for key in ("action", "object_type"):
            if data.get(key):
                entries = entries.filter(**{key: data[key]})
        if data.get("username"):
            entries = entries.filter(username__iexact=data["username"].strip())
        if text := (data.get("q") or "").strip():
            entries = entries.filter(Q(object_id=text) | Q(object_label__icontains=text))
        if data.get("date_from"):
            entries = entries.filter(created_at__date__gte=data["date_from"])
        if data.get("date_to"):
            entries = entries.filter(created_at__date__lte=data["date_to"])
        return entries


# The error queue's three views of failed events.
QUEUE_VIEWS = {
    "attention": ("Needs attention", SyncEvent.Status.FAILED_PERMANENT),
    "retrying": ("Will retry by itself", SyncEvent.Status.FAILED_TRANSIENT),
    "ignored": ("Ignored", SyncEvent.Status.IGNORED),
    # Synced, but with something to look at (SyncEvent.warning): not an error, nothing to retry.
    "warnings": ("Synced with a warning", SyncEvent.Status.SUCCEEDED),
}
# In the address, a cause without an error code.
NO_CODE = "-"


class ErrorFilterForm(forms.Form):
    show = forms.ChoiceField(
        choices=[(key, label) for key, (label, _) in QUEUE_VIEWS.items()],
        required=False,
        widget=forms.HiddenInput,
    )
    flow = forms.ChoiceField(label="Flow", required=False)
    source_object = forms.CharField(label="Object", required=False, max_length=80)
    q = forms.CharField(
        label="Name, code, invoice number, id or words in the message",
        required=False,
        max_length=200,
    )
    date_from = UKDateField(label="From", required=False)
    date_to = UKDateField(label="To", required=False)
    # Set by choosing a cause in the list of groups.
    code = forms.CharField(required=False, max_length=100, widget=forms.HiddenInput)
    error_class = forms.ChoiceField(
        choices=SyncEvent.ErrorClass.choices, required=False, widget=forms.HiddenInput
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["flow"].choices = [("", "All flows"), *Flow.choices]

    @property
    def view(self) -> str:
        return (self.is_valid() and self.cleaned_data.get("show")) or "attention"

    @property
    def status(self) -> str:
        return QUEUE_VIEWS[self.view][1]

    def queue(self):
        """The events of the view chosen, before the filters (the page and its CSV share it)."""
        events = SyncEvent.objects.filter(status=self.status)
        return events.filter(warning=True) if self.view == "warnings" else events

    def filters(self, with_cause: bool = True) -> dict:
        """The filters as SyncEventQuerySet.matching() and engine.start_bulk_retry() take them."""
        if not self.is_valid():
            return {}
        data = self.cleaned_data
        filters = {
            key: data[key]
            for key in ("flow", "source_object", "q", "date_from", "date_to")
            if data.get(key)
        }
        if with_cause and data.get("code"):
            filters["error_code"] = "" if data["code"] == NO_CODE else data["code"]
            if data.get("error_class"):
                filters["error_class"] = data["error_class"]
        return filters


class IgnoreForm(forms.Form):
    reason = forms.CharField(
        label="Why ignore it?",
        max_length=255,
        help_text="For example: duplicate customer, already fixed by hand in KashFlow.",
    )


class FieldMappingForm(forms.Form):
    """One row of a mapping. Field names come with suggestions (a datalist) from the real
    fields, and can still be typed, as a dotted path like Contacts.0.Email."""

    source_path = forms.CharField(label="Source field", required=False, max_length=255)
    target_path = forms.CharField(label="Target field", max_length=255)
    transform = forms.ChoiceField(
        label="Transform", choices=Transform.choices, initial=Transform.COPY
    )
    params = forms.CharField(
        label="Parameters",
        required=False,
        help_text='JSON, e.g. {"length": 80}',
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "params"}),
    )
    default = forms.CharField(label="Default", required=False, max_length=255)
    required = forms.BooleanField(label="Required", required=False)

    @staticmethod
    def initial_from_row(row: dict) -> dict:
        return {**row, "params": json.dumps(row["params"]) if row.get("params") else ""}

    def clean_params(self):
        text = self.cleaned_data.get("params", "").strip()
        if not text:
            return {}
        try:
            params = json.loads(text)
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise forms.ValidationError('Write the parameters as JSON, like {"length": 80}.')
        return params


class BaseMappingFormSet(forms.BaseFormSet):
    # Two rows writing one field are checked by the mapping engine (integration/mapping.py
    # duplicate_targets), which accepts a pair with a condition each, as the defaults have.

    def kept_forms(self) -> list[forms.Form]:
        # An untouched blank row has empty cleaned_data; a ticked "Remove" drops the row.
        return [f for f in self.forms if f.cleaned_data and not self._should_delete_form(f)]

    def rows(self) -> list[dict]:
        """The kept rows in their order, as MappingSet.save_new_version() takes them."""
        return [
            {name: form.cleaned_data[name] for name in FieldMappingForm.base_fields}
            for form in self.kept_forms()
        ]


MappingFormSet = forms.formset_factory(
    FieldMappingForm, formset=BaseMappingFormSet, extra=1, can_delete=True
)


class MappingVersionForm(forms.Form):
    note = forms.CharField(
        label="What changed and why", required=False, max_length=255, help_text="Optional."
    )


class VatRulesForm(forms.Form):
    """The VAT rules as a person types them: one rule a line, "NO 25" or "BOO-0001 0"."""

    countries = forms.CharField(
        label="Rates for customers in a country",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false"}),
        help_text="One a line: the country's two-letter code and the rate, e.g. “NO 25”. "
        "“GB 20” sets the UK standard rate.",
    )
    products = forms.CharField(
        label="Rates for KashFlow products",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false"}),
        help_text="One a line: the KashFlow product code and the rate, e.g. “BOO-0001 0”. "
        "Used only for a product whose KashFlow record has no VAT rate.",
    )
    note = forms.CharField(label="What changed and why", required=False, max_length=255)

    @staticmethod
    def initial_for(rules: dict) -> dict:
        return {
            kind: "\n".join(f"{key} {rate}" for key, rate in sorted(rules.get(kind, {}).items()))
            for kind in ("countries", "products")
        }

    def clean_countries(self) -> dict:
        rules = self._rules("countries")
        for code in rules:
            if not re.fullmatch(r"[A-Z]{2}", code):
                raise forms.ValidationError(
                    f"“{code}” is not a two-letter country code (GB, IE, NO)."
                )
        return rules

    def clean_products(self) -> dict:
        return self._rules("products")

    def _rules(self, name: str) -> dict:
        rules = {}
        for number, line in enumerate(self.cleaned_data[name].splitlines(), start=1):
            if not line.strip():
                continue
            key, _, rate = line.strip().rpartition(" ")
            key = key.strip().upper() if name == "countries" else key.strip()
            rate = rate.strip().removesuffix("%")
            if not key or not re.fullmatch(r"\d{1,2}(\.\d{1,2})?|100", rate):
                raise forms.ValidationError(
                    f"Line {number} (“{line.strip()}”) should be a code, a space and a rate "
                    "from 0 to 100, e.g. “NO 25”."
                )
            if key in rules:
                raise forms.ValidationError(f"{key} has two rules (line {number}); keep one.")
            rules[key] = rate
        return rules

    def rules(self) -> dict:
        return {
            "countries": self.cleaned_data["countries"],
            "products": self.cleaned_data["products"],
        }


class FinanceSettingsForm(forms.ModelForm):
    """What Finance approves before it is invoiced (integration/sync/holds.py)."""

    class Meta:
        model = FinanceSettings
        fields = ["hold_above", "vat_closed_until"]
        labels = {
            "hold_above": "Hold invoices above (net)",
            "vat_closed_until": "VAT periods closed up to",
        }
        widgets = {"vat_closed_until": forms.DateInput(attrs={"type": "date"})}
