"""``GET /v1/domains``: the domains holding stored images, with their image counts (open: a read)."""

from __future__ import annotations

from fastapi import APIRouter

from service import catalog
from service.deps import RuntimeDep
from service.schemas import DomainCount, DomainList

router = APIRouter(prefix="/v1/domains", tags=["images"])


@router.get("")
async def list_domains(runtime: RuntimeDep) -> DomainList:
    """Every domain that holds stored images, by name, with how many it holds."""
    rows = await runtime.run_io(catalog.list_domains, runtime)
    return DomainList(domains=[DomainCount(name=name, count=count) for name, count in rows])
