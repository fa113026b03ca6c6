"""The Alerts pages: what was sent to whom and whether it arrived, each person's choice of what
they receive, the webhooks an Integration admin sets, and a local trial's mail sink."""

import mailbox
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from integration import alerts as alerting
from integration.access import admin_required, viewer_required
from integration.models import Alert, AlertKind, AlertPreference, AlertWebhook
from integration.paging import keyset_page

PAGE_SIZE = 50
OUTBOX_LIMIT = 50


class AlertPreferenceForm(forms.Form):
    email = forms.EmailField(label="Your e-mail address", required=False)
    kinds = forms.MultipleChoiceField(
        label="Send me",
        choices=AlertKind.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    def clean(self):
        data = super().clean()
        if data.get("kinds") and not data.get("email"):
            self.add_error("email", "Give an address to send the alerts you chose to.")
        return data


class AlertWebhookForm(forms.ModelForm):
    url = forms.URLField(
        label="Webhook URL",
        required=False,
        assume_scheme="https",
        widget=forms.PasswordInput(render_value=False),
        help_text="A Slack-compatible incoming webhook. It usually holds a token, so it is kept "
        "encrypted and never shown again; leave empty to keep the stored one.",
    )
    kinds = forms.MultipleChoiceField(
        label="Send", choices=AlertKind.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = AlertWebhook
        fields = ["name", "kinds", "is_active"]
        labels = {"is_active": "Send to this webhook"}

    def clean_url(self):
        url = self.cleaned_data["url"]
        if not url and not self.instance.encrypted_url:
            raise forms.ValidationError("Give the webhook's URL.")
        if url and not url.startswith(("https://", "http://")):
            raise forms.ValidationError("The URL must start with https:// (or http://).")
        return url

    def save(self, commit=True):
        webhook = super().save(commit=False)
        if self.cleaned_data["url"]:
            webhook.set_url(self.cleaned_data["url"])
        if commit:
            webhook.save()
        return webhook


@viewer_required
def alerts(request):
    page = keyset_page(
        Alert.objects.prefetch_related("deliveries"),
        PAGE_SIZE,
        request.GET.get("older", ""),
        request.GET.get("newer", ""),
    )
    context = {
        "page": page,
        "webhooks": AlertWebhook.objects.all(),
        "recipients_by_default": settings.KASHFORCE["ALERTS_TO"],
        "sink": bool(settings.KASHFORCE["MAIL_SINK_DIR"]),
    }
    return render(request, "integration/alerts.html", context)


@viewer_required
@require_http_methods(["GET", "POST"])
def alert_profile(request):
    preference = AlertPreference.objects.filter(user=request.user).first()
    initial = {"email": request.user.email, "kinds": preference.kinds if preference else []}
    form = AlertPreferenceForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        request.user.email = form.cleaned_data["email"]
        request.user.save(update_fields=["email"])
        AlertPreference.objects.update_or_create(
            user=request.user, defaults={"kinds": form.cleaned_data["kinds"]}
        )
        messages.success(request, "Your alert choices are saved.")
        return redirect("dashboard:alert_profile")
    context = {
        "form": form,
        "chosen": preference is not None,
        "by_default": request.user.email.lower()
        in {a.lower() for a in settings.KASHFORCE["ALERTS_TO"]},
    }
    return render(request, "integration/alert_profile.html", context)


@admin_required
@require_http_methods(["GET", "POST"])
def alert_webhook_edit(request, pk: int | None = None):
    webhook = get_object_or_404(AlertWebhook, pk=pk) if pk else AlertWebhook(is_active=True)
    initial = None if pk else {"kinds": AlertKind.values}
    form = AlertWebhookForm(request.POST or None, instance=webhook, initial=initial)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, f"Webhook “{webhook.name}” saved.")
        return redirect("dashboard:alerts")
    return render(
        request, "integration/alert_webhook_form.html", {"form": form, "webhook": webhook}
    )


@require_POST
@admin_required
def alert_webhook_test(request, pk: int):
    webhook = get_object_or_404(AlertWebhook, pk=pk)
    try:
        alerting.send_webhook(alerting.sample_alert(request.user), webhook)
    except alerting.TransportError as exc:
        messages.error(request, f"The test did not arrive: {exc.message}")
    else:
        messages.success(request, f"A test alert was posted to “{webhook.name}”.")
    return redirect("dashboard:alerts")


@require_POST
@viewer_required
def alert_profile_test(request):
    if not request.user.email:
        messages.error(request, "Save your e-mail address first.")
        return redirect("dashboard:alert_profile")
    try:
        alerting.send_email(alerting.sample_alert(request.user), request.user.email)
    except alerting.TransportError as exc:
        messages.error(request, f"The test did not arrive: {exc.message}")
    else:
        messages.success(request, f"A test alert was sent to {request.user.email}.")
    return redirect("dashboard:alert_profile")


@viewer_required
def alert_outbox(request):
    """A local trial's mails, as the sink (scripts/run-local.sh) received them."""
    directory = settings.KASHFORCE["MAIL_SINK_DIR"]
    if not directory:
        raise Http404("No local mail sink is set up (KASHFORCE_MAIL_SINK_DIR).")
    mails = sorted(_read_maildir(Path(directory)), key=lambda m: m["date"] or 0, reverse=True)
    return render(request, "integration/alert_outbox.html", {"mails": mails[:OUTBOX_LIMIT]})


def _read_maildir(directory: Path) -> list[dict]:
    if not (directory / "new").is_dir():
        return []
    mails = []
    for message in mailbox.Maildir(directory, create=False):
        body = message.get_payload(decode=True) or b""
        mails.append(
            {
                "subject": str(make_header(decode_header(message.get("Subject", "")))),
                "to": message.get("To", ""),
                "sender": message.get("From", ""),
                "date": parsedate_to_datetime(message["Date"]) if message["Date"] else None,
                "body": body.decode(message.get_content_charset() or "utf-8", "replace"),
            }
        )
    return mails
