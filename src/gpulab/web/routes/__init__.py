"""The app's routers, one per page or API area; `gpulab.web.app` assembles them."""
