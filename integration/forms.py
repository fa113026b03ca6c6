"""Forms. Secret fields are write-only: they never render a stored value back."""

import json

from django import forms

from integration.models import Connection, Flow, SyncEvent, SyncRun, Transform, Trigger

SECRET_LABELS = {
    "password": "Password",
    "security_token": "Security token",
    "consumer_secret": "Consumer secret",
    "private_key": "Private key (PEM)",
    "memorable_word": "Memorable word",
    "outbound_secret": "Outbound Message secret (part of the webhook address)",
}


def _secret_field(name: str, label: str) -> forms.CharField:
    widget = (
        forms.Textarea(attrs={"rows": 4, "autocomplete": "off"})
        if name == "private_key"
        else forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
    )
    return forms.CharField(label=label, required=False, strip=name != "private_key", widget=widget)


class ConnectionForm(forms.ModelForm):
    """Edit a connection. Leave a secret blank to keep the stored one; tick Clear to remove it."""

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
            "is_active",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = self.instance.get_secrets() if self.instance.pk else {}
        for name in SECRET_LABELS:
            self.fields[name].help_text = (
                "Stored. Leave blank to keep it." if stored.get(name) else "Not set."
            )

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
        return cleaned

    def save(self, commit=True):
        connection = super().save(commit=False)
        for name in SECRET_LABELS:
            if self.cleaned_data.get(f"clear_{name}"):
                connection.clear_secret(name)
        connection.set_secrets(**{name: self.cleaned_data.get(name) for name in SECRET_LABELS})
        if commit:
            connection.save()
        return connection


# --------------------------------------------------------------------------------------------
# The dashboard's filters and actions


class DateInput(forms.DateInput):
    input_type = "date"


class RunFilterForm(forms.Form):
    flow = forms.ChoiceField(label="Flow", required=False)
    status = forms.ChoiceField(label="Status", required=False)
    trigger = forms.ChoiceField(label="Started by", required=False)
    date_from = forms.DateField(label="From", required=False, widget=DateInput)
    date_to = forms.DateField(label="To", required=False, widget=DateInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["flow"].choices = [("", "All flows"), *Flow.choices]
        self.fields["status"].choices = [("", "Any status"), *SyncRun.Status.choices]
        self.fields["trigger"].choices = [("", "Anything"), *Trigger.choices]

    def apply(self, runs):
        data = self.cleaned_data
        for key in ("flow", "status", "trigger"):
            if data.get(key):
                runs = runs.filter(**{key: data[key]})
        if data.get("date_from"):
            runs = runs.filter(created_at__date__gte=data["date_from"])
        if data.get("date_to"):
            runs = runs.filter(created_at__date__lte=data["date_to"])
        return runs


# The error queue's three views of failed events.
QUEUE_VIEWS = {
    "attention": ("Needs attention", SyncEvent.Status.FAILED_PERMANENT),
    "retrying": ("Will retry by itself", SyncEvent.Status.FAILED_TRANSIENT),
    "ignored": ("Ignored", SyncEvent.Status.IGNORED),
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
    q = forms.CharField(label="Record id or words in the message", required=False, max_length=200)
    date_from = forms.DateField(label="From", required=False, widget=DateInput)
    date_to = forms.DateField(label="To", required=False, widget=DateInput)
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
        label="Parameters", required=False, help_text='JSON, e.g. {"length": 80}'
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
    def clean(self):
        if any(self.errors):
            return
        seen = set()
        for form in self.kept_forms():
            target = form.cleaned_data.get("target_path")
            if target in seen:
                form.add_error("target_path", "Another row already writes this field.")
            seen.add(target)

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
