import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from integration.models import (
    Connection,
    CrossRef,
    FieldMapping,
    Flow,
    MappingSet,
    SyncEvent,
    SyncRun,
    Trigger,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ["username"]
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")

    @factory.post_generation
    def password(obj, create, extracted, **kwargs):
        obj.set_password(extracted or "correct horse battery")
        if create:
            obj.save()


class KashFlowConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Connection
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"KashFlow {n}")
    kind = Connection.Kind.KASHFLOW
    auth_method = Connection.AuthMethod.KF_PASSWORD
    base_url = "https://api.kashflow.com/v2"
    username = "accounts@example.co.uk"

    @factory.post_generation
    def secrets(obj, create, extracted, **kwargs):
        obj.set_secrets(**(extracted or {"password": "Tr0ub4dor&3", "memorable_word": "pineapple"}))
        if create:
            obj.save()


class SalesforceConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Connection
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Salesforce {n}")
    kind = Connection.Kind.SALESFORCE
    auth_method = Connection.AuthMethod.SF_PASSWORD
    login_url = "https://login.salesforce.com"
    username = "integration@example.co.uk"

    @factory.post_generation
    def secrets(obj, create, extracted, **kwargs):
        obj.set_secrets(
            **(extracted or {"password": "s3cret-Pass", "security_token": "TOKENabc123"})
        )
        if create:
            obj.save()


class MappingSetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MappingSet

    # A pair the default templates (migration 0004) do not install, so tests start clean.
    name = "Suppliers to Accounts"
    flow = Flow.CUSTOMERS
    source_object = "kashflow.Supplier"
    target_object = "salesforce.Account"
    version = 1
    is_active = True


class FieldMappingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FieldMapping

    mapping_set = factory.SubFactory(MappingSetFactory)
    order = factory.Sequence(int)
    source_path = "Name"
    target_path = "Name"


class CrossRefFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CrossRef

    object_type = CrossRef.ObjectType.CUSTOMER
    salesforce_id = factory.Sequence(lambda n: f"001000000000{n:03d}AAA")
    kashflow_key = factory.Sequence(lambda n: f"CUST{n:04d}")


class SyncRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SyncRun

    flow = Flow.CUSTOMERS
    trigger = Trigger.SCHEDULE


class SyncEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SyncEvent

    run = factory.SubFactory(SyncRunFactory)
    flow = Flow.CUSTOMERS
    direction = "kf_to_sf"
    source_object = "kashflow.Customer"
    source_id = factory.Sequence(lambda n: f"CUST{n:04d}")
    target_object = "salesforce.Account"
    dedupe_key = factory.Sequence(lambda n: f"customers:CUST{n:04d}:v1")
    payload = factory.LazyAttribute(lambda e: {"Code": e.source_id, "Name": "Acme Ltd"})
    created_at = factory.LazyFunction(timezone.now)
