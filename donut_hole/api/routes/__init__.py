"""The API's routers, one module per resource; :func:`donut_hole.api.main.create_app` includes them."""
