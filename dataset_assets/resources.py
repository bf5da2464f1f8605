"""Dagster resources: the dataset spec as one configurable resource, ``dataset``, and ``s3``.

The ``dataset`` resource declares every spec key that may change per run, with the spec file's
value as its default and the option's description, so the Launchpad shows the dataset's actual
settings and a run can override any subset of them (``resources: {dataset: {config:
{timeout: 30}}}``); the merged values are validated like the file itself, with errors that name
the key. Keys fixed per dataset (the shard layout: ``image_size``, ``output_format``,
``number_sample_per_shard``, ...; where it lives; ``shards_per_run``) are read from the spec
file only: a run that changed them would mix two layouts in one dataset.

The ``s3`` resource (dagster-aws ``S3Resource``) says how to reach ``s3://`` paths of the spec
(URL list, ``output_folder``, ``plan_folder``): endpoint (MinIO, R2, ...), region and
credentials. :func:`s3_resource_from_env` binds each field to the standard AWS environment
variable that is set (as ``EnvVar``, so the UI shows the variable's name, never its value);
fields left unset fall back to boto's credential chain (instance/task role, IRSA, profile).
:func:`storage_options` turns the resource into the plain dict the Dagster-free engine and
planner take.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import dagster as dg
import pydantic
from dagster_aws.s3 import S3Resource

from dataset_assets import catalogue
from dataset_assets.io.storage import url_protocol
from dataset_assets.spec import DatasetSpec, spec_from_mapping

# S3Resource field -> the AWS environment variables that set it, in precedence order.
S3_ENVIRONMENT = {
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region_name": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
    "profile_name": ("AWS_PROFILE",),
}


class DatasetResource(dg.ConfigurableResource):
    """Base class; :func:`dataset_resource` derives one with a field per run-overridable key."""

    # The spec file's values of the keys fixed per dataset (set on each derived class).
    fixed_values: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def spec(self) -> DatasetSpec:
        values = dict(self.fixed_values)
        values.update((name, getattr(self, name)) for name in DatasetSpec.model_fields if name not in values)
        return spec_from_mapping(values, source="resource 'dataset' (spec file + run config)")


def resource_description(entry: catalogue.Entry) -> str:
    """The Launchpad's text for a key: what it does and what it accepts."""
    text = entry.help
    allowed = catalogue.allowed(entry)
    return f"{text} Allowed: {allowed}." if allowed else text


def dataset_resource(spec: DatasetSpec) -> DatasetResource:
    entries = catalogue.options()
    fields = {
        entry.name: (
            DatasetSpec.model_fields[entry.name].annotation,
            pydantic.Field(default=getattr(spec, entry.name), description=resource_description(entry)),
        )
        for entry in entries
        if not entry.fixed
    }
    resource_class = pydantic.create_model("DatasetResource", __base__=DatasetResource, **fields)  # type: ignore[call-overload]
    resource_class.fixed_values = MappingProxyType(
        {entry.name: getattr(spec, entry.name) for entry in entries if entry.fixed}
    )
    return resource_class()


def s3_resource_from_env(environ: Mapping[str, str] | None = None) -> S3Resource:
    """An ``S3Resource`` whose fields read the AWS environment variables that are set."""
    environ = os.environ if environ is None else environ
    fields: dict[str, Any] = {}
    for field, names in S3_ENVIRONMENT.items():
        name = next((n for n in names if environ.get(n)), None)
        if name is not None:
            fields[field] = dg.EnvVar(name)
    return S3Resource(**fields)


def storage_options(s3: S3Resource) -> dict[str, Any]:
    """s3fs keyword arguments equivalent to ``s3``'s settings (plain, picklable values)."""
    options: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if s3.aws_access_key_id:
        options["key"] = s3.aws_access_key_id
    if s3.aws_secret_access_key:
        options["secret"] = s3.aws_secret_access_key
    if s3.aws_session_token:
        options["token"] = s3.aws_session_token
    if s3.profile_name:
        options["profile"] = s3.profile_name
    if s3.use_unsigned_session:
        options["anon"] = True
    if s3.endpoint_url:
        options["endpoint_url"] = s3.endpoint_url
    if not s3.use_ssl:
        options["use_ssl"] = False
    if s3.region_name:
        client_kwargs["region_name"] = s3.region_name
    if s3.verify is not None:
        client_kwargs["verify"] = s3.verify
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    if s3.max_attempts:
        options["config_kwargs"] = {"retries": {"max_attempts": s3.max_attempts, "mode": "standard"}}
    return options


S3_PROTOCOLS = ("s3", "s3a")


def spec_storage_options(spec: DatasetSpec, s3: S3Resource) -> dict[str, Any] | None:
    """The engine's ``storage_options`` for the spec's locations: the S3 settings, for S3 URLs only
    (per protocol, so that an ``https://`` URL list next to an S3 output is read as it is)."""
    locations = [spec.url_list, spec.output_folder, spec.plan_root]
    if any(url_protocol(location) in S3_PROTOCOLS for location in locations):
        options = storage_options(s3)
        return dict.fromkeys(S3_PROTOCOLS, options)
    return None
