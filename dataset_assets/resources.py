"""Dagster resources: the dataset spec as one configurable resource, ``dataset``.

The resource declares every spec key with the spec file's value as its default, so the
Launchpad shows the dataset's actual settings and a run can override any subset of them
(``resources: {dataset: {config: {image_size: 384}}}``); the merged values are validated
like the file itself, with errors that name the key.
"""

from __future__ import annotations

import dagster as dg
import pydantic

from dataset_assets.spec import DatasetSpec, spec_from_mapping


class DatasetResource(dg.ConfigurableResource):
    """Base class; :func:`dataset_resource` derives one with a field per spec key."""

    def spec(self) -> DatasetSpec:
        values = {name: getattr(self, name) for name in DatasetSpec.model_fields}
        return spec_from_mapping(values, source="resource 'dataset' (spec file + run config)")


def dataset_resource(spec: DatasetSpec) -> DatasetResource:
    fields = {
        name: (field.annotation, pydantic.Field(default=getattr(spec, name), description=field.description))
        for name, field in DatasetSpec.model_fields.items()
    }
    resource_class = pydantic.create_model("DatasetResource", __base__=DatasetResource, **fields)  # type: ignore[call-overload]
    return resource_class()
