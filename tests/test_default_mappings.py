from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command

from integration.mapping import KASHFLOW_FIELDS, salesforce_fields_from_describe, validate_rows
from integration.mapping_defaults import TEMPLATES, install_default_mappings
from integration.models import FieldMapping, Flow, MappingSet
from tests.salesforce_describe import describe

PAIRS = [(t.flow, t.source_object, t.target_object) for t in TEMPLATES]


def target_fields(target_object: str):
    system, name = target_object.split(".")
    if system == "kashflow":
        return KASHFLOW_FIELDS[name]
    return salesforce_fields_from_describe(describe(name))


def test_every_flow_has_templates_and_each_pair_one():
    assert {template.flow for template in TEMPLATES} == set(Flow.values)
    assert len(set(PAIRS)) == len(PAIRS)


@pytest.mark.parametrize(
    "template", TEMPLATES, ids=lambda t: f"{t.source_object}>{t.target_object}"
)
def test_default_rows_validate_against_the_targets_fields(template):
    errors = validate_rows(
        template.rows,
        target_fields(template.target_object),
        update_only=template.update_only,
        filled_by_flow=template.filled_by_flow,
    )
    assert [error.message for error in errors] == []


@pytest.mark.django_db
def test_the_migration_installed_one_active_version_per_pair():
    for template in TEMPLATES:
        pair = (template.flow, template.source_object, template.target_object)
        versions = MappingSet.objects.history(*pair)
        assert [(v.version, v.is_active) for v in versions] == [(1, True)], pair
        assert versions.get().as_rows() == template.rows
    assert MappingSet.objects.count() == len(TEMPLATES)


@pytest.mark.django_db
def test_the_command_is_idempotent():
    rows_before = FieldMapping.objects.count()
    call_command("install_default_mappings", stdout=(out := StringIO()))
    assert "Installed" not in out.getvalue() and out.getvalue().count("Already mapped") == len(
        TEMPLATES
    )
    assert (MappingSet.objects.count(), FieldMapping.objects.count()) == (
        len(TEMPLATES),
        rows_before,
    )


@pytest.mark.django_db
def test_the_command_installs_only_missing_pairs_and_leaves_edits_alone():
    account = MappingSet.objects.get(
        source_object="kashflow.Customer", target_object="salesforce.Account"
    )
    edited = account.save_new_version([{"source_path": "Name", "target_path": "Name"}])
    MappingSet.objects.filter(target_object="salesforce.KashFlow_Payment__c").delete()

    call_command("install_default_mappings", stdout=(out := StringIO()))

    assert out.getvalue().count("Installed") == 1 and "Payments to Salesforce" in out.getvalue()
    assert MappingSet.objects.active().get(pk=edited.pk).version == 2
    assert MappingSet.objects.filter(target_object="salesforce.KashFlow_Payment__c").get().is_active
    assert install_default_mappings(apps) == []
