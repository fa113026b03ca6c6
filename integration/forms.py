"""Forms. Secret fields are write-only: they never render a stored value back."""

from django import forms

from integration.models import Connection

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
