<#
.SYNOPSIS
    Runs Update-Recipient on the Microsoft 365 groups Group Writeback (gwb) wrote that
    Exchange has not stamped yet, so they appear in the on-premises address lists.

.DESCRIPTION
    Microsoft's known issue for written-back Microsoft 365 groups: on-premises Exchange
    does not show them in the GAL until Update-Recipient stamps showInAddressBook and
    legacyExchangeDN. gwb writes the group (a RemoteGroupMailbox) and leaves those
    attributes to Exchange, so this script is the post-write step: run it from the
    Exchange Management Shell (management tools are enough), or as a scheduled task
    every few minutes. It only touches groups carrying gwb's anchor
    (adminDescription=Group_*) with msExchRecipientTypeDetails 8796093022208 under the
    given OUs that have no showInAddressBook yet; running it again changes nothing.

.PARAMETER SearchBase
    The managed OU(s) of gwb's writer ([directory] managed_ous).

.EXAMPLE
    .\Update-GwbRecipients.ps1 -SearchBase 'OU=Cloud Groups,DC=contoso,DC=com'
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string[]] $SearchBase
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$filter = '(&(objectClass=group)(adminDescription=Group_*)(msExchRecipientTypeDetails=8796093022208)(!(showInAddressBook=*)))'
foreach ($base in $SearchBase) {
    $searcher = [adsisearcher]$filter
    $searcher.SearchRoot = [adsi]"LDAP://$base"
    $searcher.PageSize = 500
    [void]$searcher.PropertiesToLoad.Add('distinguishedName')
    foreach ($result in $searcher.FindAll()) {
        $dn = [string]$result.Properties['distinguishedname'][0]
        if ($PSCmdlet.ShouldProcess($dn, 'Update-Recipient')) {
            try {
                Update-Recipient -Identity $dn
                Write-Output "updated $dn"
            } catch {
                Write-Warning "Update-Recipient $dn failed: $_"
            }
        }
    }
}
