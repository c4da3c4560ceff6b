from django.shortcuts import render

from async_actions.models import Action


def home(request):
    if request.user.is_authenticated:
        recent = Action.objects.owned_by(request.user)[:10]
    else:
        recent = Action.objects.owned_by(session_key=request.session.session_key)[:10]
    return render(request, "home.html", {"recent": recent})
